"""Helpers for tests that run `python -m alexnet_jax.main` as a user would, each run its
own process: tiny settings, the run's metrics and its final checkpoint read back.

Runs use 67 x 67 crops of 76 x 76 images (the network's structure at a fraction of the
cost) and a few steps.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import checkpointing
from tests.conftest import REPO

TINY = ['--config.data.image_size=67', '--config.data.resize_size=76',
        '--config.batch_size=8', '--config.eval_batch_size=40', '--config.log_every_steps=2',
        '--config.data.eval_views=1']


# What TensorFlow's and absl's C++ print as TensorFlow loads, on CPUs where oneDNN is on by
# default (TF_ENABLE_ONEDNN_OPTS=1 turns it on anywhere, so a test sees these lines).
STARTUP_NOISE = ('oneDNN custom operations are on', 'All log messages before absl::InitializeLog',
                 'cpu_feature_guard')
WITH_STARTUP_NOISE = {'TF_ENABLE_ONEDNN_OPTS': '1'}


def assert_no_startup_noise(output):
  """None of the libraries' start-up lines in `output`, which starts with our own line."""
  assert not [n for n in STARTUP_NOISE if n in output], output[:2000]
  first = output.lstrip().splitlines()[0]
  assert (re.match(r'[IWE]\d{4} [\d:.]+ +\d+ (\w+)\.py:\d+\] ', first)
          or first.startswith('ERROR: ')), first


def main_command(workdir, *overrides, steps=6):
  return [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/sample.py',
          f'--workdir={workdir}', f'--config.num_train_steps={steps}', *TINY, *overrides]


def environment(devices=1, path=(), **extra):
  """The environment of a run: the repo (and `path`) on PYTHONPATH, `devices` CPU devices."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *map(str, path)]),
             TF_CPP_MIN_LOG_LEVEL='2', **extra)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def run_main(workdir, *overrides, steps=6, devices=1, path=(), check=True, **extra):
  result = subprocess.run(main_command(workdir, *overrides, steps=steps), cwd=REPO,
                          env=environment(devices, path, **extra), capture_output=True,
                          text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(result.stderr[-3000:])
  return result


def without_tensorflow(directory):
  """A folder for PYTHONPATH whose sitecustomize makes TensorFlow and TFDS unimportable in
  every Python process started with it and in their children, as on a machine without
  them (the device check's GPU machine): `import tensorflow` raises ModuleNotFoundError."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'sitecustomize.py'), 'w') as f:
    f.write("import sys\nsys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n")
  return str(directory)


def metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def final_params(workdir):
  """The latest checkpoint's parameters as NumPy arrays, read with orbax directly."""
  directory = checkpointing.checkpoint_dir(workdir)
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  with ocp.PyTreeCheckpointer() as checkpointer:
    path = os.path.join(directory, str(step), 'state')
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(path).item_metadata.tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return step, state['params']


def assert_trees_equal(a, b, rtol=0.0):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    if rtol:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(x).max(),
                                 err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


