"""alexnet_jax.cpu_settings, each checked in a fresh interpreter; importing changes nothing.

The XLA:CPU convolution route is read from the compiled HLO; the memory settings from the
page faults a repeated computation costs (getrusage), against the same run opted out.
"""

import os
import subprocess
import sys

from jaxlib import version as jaxlib_version
import pytest

from alexnet_jax import cpu_settings
from tests.conftest import REPO

# The XLA:CPU flag is only added for the jaxlib it was measured with.
measured_jaxlib = pytest.mark.skipif(
    jaxlib_version.__version__ not in cpu_settings.MEASURED_JAXLIB,
    reason=f'the XLA:CPU flag is only added for jaxlib {cpu_settings.MEASURED_JAXLIB}')

_APPLY = 'from alexnet_jax import cpu_settings; print("applied:", cpu_settings.apply())\n'

_ROUTE = _APPLY + '''
import jax, jax.numpy as jnp
from jax import lax
x, w = jnp.ones((8, 13, 13, 192)), jnp.ones((3, 3, 192, 192))  # conv4's shapes
conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
print('ynn' if '__ynn_fusion' in conv.lower(x, w).compile().as_text() else 'eigen')
'''

# A step whose 128 MB of temporaries ([4096, 4096] twice) are allocated at each call;
# prints the median page faults of a call, after a warm-up.
_FAULTS = _APPLY + '''
import resource, statistics, jax, jax.numpy as jnp
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
  """Runs `code` in a fresh interpreter (JAX not yet started, no compilation cache: the
  programs read here are compiled with the interpreter's settings) -> its stdout."""
  env = {k: v for k, v in dict(os.environ, **env).items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        check=True, env=env, cwd=REPO).stdout


@measured_jaxlib
@pytest.mark.parametrize('opt_out', ['', '0'])
def test_convolutions_run_through_eigen_unless_opted_out(opt_out):
  out = python(_ROUTE, ALEXNET_JAX_CPU_DEFAULTS=opt_out or '1', XLA_FLAGS='').split()[-1]
  assert out == ('ynn' if opt_out == '0' else 'eigen')


def test_freed_memory_is_kept_so_repeated_steps_do_not_page_fault():
  opted_out = float(python(_FAULTS, ALEXNET_JAX_CPU_DEFAULTS='0').split()[-1])
  default = float(python(_FAULTS).split()[-1])
  # Opted out, the temporary comes fresh from the OS: a fault per 4 KB page it touches.
  assert opted_out > 10_000, opted_out
  assert default < 1_000, default


def test_async_dispatch_is_turned_off_on_the_cpu_unless_set():
  code = _APPLY + "import jax; print(jax.config.values['jax_cpu_enable_async_dispatch'])"
  assert python(code).split()[-1] == 'False'
  assert python(code, ALEXNET_JAX_CPU_DEFAULTS='0').split()[-1] == 'True'
  assert python(code, JAX_CPU_ENABLE_ASYNC_DISPATCH='true').split()[-1] == 'True'


def test_nothing_is_applied_where_an_accelerator_may_run():
  """JAX_PLATFORMS naming a GPU: no flag, no config change, no malloc setting."""
  code = _APPLY + ("import os, jax; print('flags:', repr(os.environ['XLA_FLAGS']))\n"
                   "print('async:', jax.config.values['jax_cpu_enable_async_dispatch'])")
  out = python(code, JAX_PLATFORMS='cuda,cpu', XLA_FLAGS='')
  assert 'applied: ()' in out and "flags: ''" in out and 'async: True' in out


_IMPORT_ALL = '''
import importlib, os, pkgutil, jax, flax, optax, orbax.checkpoint, tensorflow, tensorflow_datasets
env, config = dict(os.environ), dict(jax.config.values)
import alexnet_jax
for m in pkgutil.iter_modules(alexnet_jax.__path__):
  importlib.import_module('alexnet_jax.' + m.name)
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
changed += sorted(k for k, v in jax.config.values.items() if config.get(k) != v)
print('changed:', changed)
'''


def test_importing_every_module_changes_nothing():
  """No environment variable and no JAX setting differs after importing every module
  (main's absl flags included), against an interpreter that had imported the libraries
  (TensorFlow sets variables of its own on import)."""
  assert python(_IMPORT_ALL, XLA_FLAGS='').strip().splitlines()[-1] == 'changed: []'
