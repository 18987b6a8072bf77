"""AlexNet in JAX/Flax: the 2012 network, its recipe and its two-column model parallelism.

Importing the package adds one XLA:CPU flag to XLA_FLAGS (read when JAX starts its CPU
backend, at the first computation): convolutions through Eigen rather than YNNPACK.
YNNPACK splits a convolution over cores only in blocks of 64 output channels, so conv2's
input gradient (48 channels a column) ran on one core; measured on 2 cores, the training
step is 10-14% faster and the forward pass 30% (benchmarks/NOTES.md). It is added only for
the jaxlib it was measured with (other versions may not know the flag, and XLA stops on
an unknown one), never when XLA_FLAGS already sets it, and not with
ALEXNET_JAX_XLA_DEFAULTS=0. GPU and TPU backends ignore it. Import alexnet_jax before
running anything with JAX; if JAX's backend is already up, a warning says so.
"""

import os
import sys
import warnings

_MEASURED_JAXLIB = ('0.10.2',)
_CPU_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def _add_xla_defaults():
  from jaxlib import version  # Loads no backend.
  flags = os.environ.get('XLA_FLAGS', '')
  if (os.environ.get('ALEXNET_JAX_XLA_DEFAULTS', '1') == '0'
      or version.__version__ not in _MEASURED_JAXLIB
      or _CPU_FLAG.split('=')[0] in flags):
    return
  if _jax_backend_started():
    warnings.warn('alexnet_jax was imported after JAX started its backend, so its XLA:CPU '
                  f'default ({_CPU_FLAG}) is not in effect; import alexnet_jax first.')
    return
  os.environ['XLA_FLAGS'] = f'{flags} {_CPU_FLAG}'.strip()


def _jax_backend_started():
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A JAX without it: assume not started.
    return False


_add_xla_defaults()
