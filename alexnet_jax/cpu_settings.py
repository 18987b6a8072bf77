"""Process settings that make training on the CPU faster (benchmarks/NOTES.md, items 10, 12
and 14.1). Importing this module changes nothing: an entry point calls `apply()` before its
first JAX computation (console.app_main for every command-line tool, the benchmarks, the
tests' conftest). They apply only where JAX will run on the CPU; ALEXNET_JAX_CPU_DEFAULTS=0
or `--nocpu_settings` opts out.

* Convolutions through Eigen rather than YNNPACK (a flag added to XLA_FLAGS): YNNPACK splits
  a convolution over cores only in blocks of 64 output channels, so layers with fewer (a
  column of conv2's input gradient) run on one core. Only for the jaxlib it was measured
  with (XLA stops on a flag it does not know), and never over the flag set in XLA_FLAGS.
* Computations run in the calling thread (``jax_cpu_enable_async_dispatch=False``, unless
  JAX_CPU_ENABLE_ASYNC_DISPATCH is set), and glibc's malloc keeps what that thread frees
  (``mallopt``: no mmap, no trimming; not where GLIBC_TUNABLES sets malloc's parameters).
  XLA:CPU allocates a step's temporaries at every call; fresh from the OS, each page
  faults. The process's memory stays at its peak.
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
