"""Test set-up: four emulated CPU devices, so the ('data', 'model') meshes can be tested.

The flag must be set before JAX is imported anywhere; conftest.py is imported first.
"""

import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

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
