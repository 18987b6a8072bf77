"""AlexNet in JAX/Flax: the 2012 network, its recipe and its two-column model parallelism.

Importing the package sets three CPU defaults, each measured on the 2-core CPU this
project is benchmarked on (benchmarks/NOTES.md); ALEXNET_JAX_CPU_DEFAULTS=0 turns all off.
They have to be in place before JAX starts its backend (at the first computation): import
alexnet_jax before running anything with JAX, or a warning says they are not in effect.

* XLA:CPU convolutions through Eigen rather than YNNPACK (a flag added to XLA_FLAGS).
  YNNPACK splits a convolution over cores only in blocks of 64 output channels, so
  conv2's input gradient (48 channels a column) ran on one core: the training step is
  10-14% faster, the forward pass 30%. Added only for the jaxlib it was measured with
  (other versions may not know the flag, and XLA stops on an unknown one) and never when
  XLA_FLAGS already sets it. GPU and TPU backends ignore it.
* A computation on the CPU backend runs in the thread that calls it
  (``jax_cpu_enable_async_dispatch=False``), and glibc's malloc keeps the memory that
  thread frees (no mmap, no trimming: ``mallopt``). XLA:CPU allocates a step's
  temporaries (680 MB for the training step at batch 32) at every call; fresh from the OS
  they cost 166,000 page faults a step. With both, none: the step is 20-25% faster. The
  process's memory stays at its peak. Other threads (tf.data's) keep their own arenas.
"""

import ctypes
import os
import platform
import sys
import warnings

_MEASURED_JAXLIB = ('0.10.2',)
_CPU_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
# mallopt(3) parameters and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MALLOPTS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def _set_cpu_defaults():
  if _jax_backend_started():
    warnings.warn('alexnet_jax was imported after JAX started its backend, so its CPU '
                  'defaults (see alexnet_jax/__init__.py) are not in effect; import '
                  'alexnet_jax first.')
    return
  from jaxlib import version  # Loads no backend.
  flags = os.environ.get('XLA_FLAGS', '')
  if version.__version__ in _MEASURED_JAXLIB and _CPU_FLAG.split('=')[0] not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {_CPU_FLAG}'.strip()
  import jax  # pylint: disable=g-import-not-at-top  # Starts no backend either.
  if ('JAX_CPU_ENABLE_ASYNC_DISPATCH' not in os.environ
      and 'jax_cpu_enable_async_dispatch' in jax.config.values):
    jax.config.update('jax_cpu_enable_async_dispatch', False)
  _keep_freed_memory()


def _jax_backend_started():
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A JAX without it: assume not started.
    return False


def _keep_freed_memory():
  """glibc only; a no-op where GLIBC_TUNABLES already sets malloc parameters."""
  if (sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc'
      or 'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', '')):
    return
  libc = ctypes.CDLL(None)
  for param, value in _MALLOPTS:
    libc.mallopt(param, value)


if os.environ.get('ALEXNET_JAX_CPU_DEFAULTS', '1') != '0':
  _set_cpu_defaults()
