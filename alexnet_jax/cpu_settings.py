"""Process settings for training on the CPU, measured on the 2-core CPU this project is
benchmarked on (benchmarks/NOTES.md items 10, 12 and 14.1). Importing this module changes
nothing: an entry point that wants them calls `apply()` before its first JAX computation
(console.app_main does, for every command-line tool; so do the benchmarks and the tests'
conftest). They apply only where JAX will run on the CPU (no accelerator plugin installed,
or JAX_PLATFORMS=cpu); ALEXNET_JAX_CPU_DEFAULTS=0 or `--nocpu_settings` opts out.

* XLA:CPU convolutions through Eigen rather than YNNPACK (a flag added to XLA_FLAGS).
  YNNPACK splits a convolution over cores only in blocks of 64 output channels, so
  conv2's input gradient (48 channels a column) ran on one core: the training step is
  10-14% faster, the forward pass 30%. Added only for the jaxlib it was measured with
  (another may not know the flag, and XLA stops on an unknown one), and never over a
  setting of the flag in XLA_FLAGS.
* A computation runs in the thread that calls it (``jax_cpu_enable_async_dispatch=False``,
  unless JAX_CPU_ENABLE_ASYNC_DISPATCH is set), and glibc's malloc keeps the memory that
  thread frees (no mmap, no trimming: ``mallopt``; not where GLIBC_TUNABLES sets malloc's
  parameters). XLA:CPU allocates a step's temporaries (680 MB for the training step at
  batch 32) at every call; fresh from the OS they cost 166,000 page faults a step. With
  both, none: the step is 20-25% faster. The process's memory stays at its peak.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

from absl import logging

MEASURED_JAXLIB = ('0.10.2',)
XLA_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
# mallopt(3) parameters and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MALLOPTS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def apply(enabled=True):
  """Applies the CPU settings if `enabled`, not opted out, and JAX will run on the CPU.

  Call before JAX's first computation (the XLA flag is read when the backend starts).
  Returns the settings applied, a tuple of names (empty if none), and logs them.
  """
  if not enabled or os.environ.get('ALEXNET_JAX_CPU_DEFAULTS', '1') == '0':
    return ()
  if _accelerator_possible():
    logging.info('CPU settings not applied: an accelerator backend may be used.')
    return ()
  applied = []
  from jaxlib import version  # pylint: disable=g-import-not-at-top  # Starts no backend.
  flags = os.environ.get('XLA_FLAGS', '')
  if version.__version__ in MEASURED_JAXLIB and XLA_FLAG.split('=')[0] not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {XLA_FLAG}'.strip()
    applied.append('eigen_convolutions')
  import jax  # pylint: disable=g-import-not-at-top  # Nor does this.
  if ('JAX_CPU_ENABLE_ASYNC_DISPATCH' not in os.environ
      and 'jax_cpu_enable_async_dispatch' in jax.config.values):
    jax.config.update('jax_cpu_enable_async_dispatch', False)
    applied.append('synchronous_dispatch')
  if _keep_freed_memory():
    applied.append('keep_freed_memory')
  logging.info('CPU settings applied: %s (alexnet_jax/cpu_settings.py).', ', '.join(applied))
  return tuple(applied)


def _accelerator_possible():
  """Whether JAX may pick a GPU or TPU: JAX_PLATFORMS names one, or (unset) a plugin is
  installed. Decided without starting a backend, which would be too late for the flag."""
  import jax  # pylint: disable=g-import-not-at-top
  platforms = jax.config.values.get('jax_platforms') or os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True
  return any(importlib.util.find_spec(m) is not None for m in ('jax_plugins', 'libtpu'))


def _keep_freed_memory():
  """glibc only; not where GLIBC_TUNABLES already sets malloc's parameters."""
  if (sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc'
      or 'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', '')):
    return False
  libc = ctypes.CDLL(None)
  for param, value in _MALLOPTS:
    libc.mallopt(param, value)
  return True
