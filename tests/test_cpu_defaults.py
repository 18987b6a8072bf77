"""alexnet_jax/__init__.py's CPU defaults, each checked in a fresh interpreter.

The XLA:CPU convolution route is read from the compiled HLO; the memory defaults from the
page faults a repeated computation costs (getrusage), against the same run opted out.
"""

import os
import subprocess
import sys

from jaxlib import version as jaxlib_version
import pytest

import alexnet_jax
from tests.conftest import REPO

# The XLA:CPU flag is only added for the jaxlib it was measured with.
measured_jaxlib = pytest.mark.skipif(
    jaxlib_version.__version__ not in alexnet_jax._MEASURED_JAXLIB,
    reason=f'the XLA:CPU flag is only added for jaxlib {alexnet_jax._MEASURED_JAXLIB}')

_ROUTE = '''
import alexnet_jax, jax, jax.numpy as jnp
from jax import lax
x, w = jnp.ones((8, 13, 13, 192)), jnp.ones((3, 3, 192, 192))  # conv4's shapes
conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
print('ynn' if '__ynn_fusion' in conv.lower(x, w).compile().as_text() else 'eigen')
'''

# A step whose 128 MB of temporaries ([4096, 4096] twice) are allocated at each call;
# prints the median page faults of a call, after a warm-up.
_FAULTS = '''
import resource, statistics, alexnet_jax, jax, jax.numpy as jnp
x = jnp.ones((4096, 1))
f = jax.jit(lambda x: jnp.sin(x * x.T).sum(axis=0))
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))
'''


def python(code, **env):
  """Runs `code` in a fresh interpreter (JAX not yet started) -> its stdout."""
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        check=True, env=dict(os.environ, **env), cwd=REPO).stdout


@measured_jaxlib
@pytest.mark.parametrize('opt_out', ['', '0'])
def test_import_routes_cpu_convolutions_to_eigen_unless_opted_out(opt_out):
  out = python(_ROUTE, ALEXNET_JAX_CPU_DEFAULTS=opt_out or '1', XLA_FLAGS='').split()[-1]
  assert out == ('ynn' if opt_out == '0' else 'eigen')


def test_import_keeps_freed_memory_so_repeated_steps_do_not_page_fault():
  opted_out = float(python(_FAULTS, ALEXNET_JAX_CPU_DEFAULTS='0').split()[-1])
  default = float(python(_FAULTS).split()[-1])
  # Opted out, the temporary comes fresh from the OS: a fault per 4 KB page it touches.
  assert opted_out > 10_000, opted_out
  assert default < 1_000, default


def test_import_turns_off_async_dispatch_on_cpu_unless_set():
  code = "import alexnet_jax, jax; print(jax.config.values['jax_cpu_enable_async_dispatch'])"
  assert python(code).split()[-1] == 'False'
  assert python(code, ALEXNET_JAX_CPU_DEFAULTS='0').split()[-1] == 'True'
  assert python(code, JAX_CPU_ENABLE_ASYNC_DISPATCH='true').split()[-1] == 'True'


def test_import_after_jax_started_warns_and_changes_nothing():
  out = python('import os, warnings, jax; jax.devices(); warnings.simplefilter("error")\n'
               'try:\n  import alexnet_jax\nexcept UserWarning as w:\n  print("warned:", w)\n'
               'print("flags:", repr(os.environ.get("XLA_FLAGS", "")))\n'
               "print('async:', jax.config.values['jax_cpu_enable_async_dispatch'])",
               XLA_FLAGS='')
  assert 'warned: alexnet_jax was imported after JAX started its backend' in out
  assert "flags: ''" in out
  assert 'async: True' in out
