"""Test set-up: four emulated CPU devices, so the ('data', 'model') meshes can be tested.

The flag must be set before JAX is imported anywhere; conftest.py is imported first.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One compilation cache for the test process and every run of main it starts: most of those
# runs compile the same few programs, and a run that finds them cached takes half the CPU
# time (15 s instead of 30 on the 2-core machine). Deleted at exit.
_XLA_CACHE = tempfile.mkdtemp(prefix='alexnet_jax_tests_xla_cache_')
atexit.register(shutil.rmtree, _XLA_CACHE, True)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _XLA_CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # pylint: disable=g-import-not-at-top

from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top

cpu_settings.apply()  # The tests' own computations run as the tools' do.

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def uninterrupted(tmp_path_factory):
  """A 6-step run of main on the sample (tests/runs.py), checkpointing every 2 steps."""
  from tests import runs  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = runs.run_main(workdir, '--config.checkpoint_every_steps=2',
                         '--config.eval_every_steps=3')
  (workdir.parent / f'{workdir.name}.stderr').write_text(result.stderr)  # What a user saw.
  return workdir
