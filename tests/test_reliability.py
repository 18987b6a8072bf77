"""Faults that happen in practice, injected for real: nothing is lost, errors say what to do.

Bad images are covered in tests/test_input_pipeline.py; NaN stop, SIGKILL after a save and
incompatible checkpoints also in tests/test_main.py.
"""

import os
import random
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpointing
from alexnet_jax import train
from configs import sample
from tests.conftest import REPO
from tests.runs import assert_trees_equal
from tests.runs import environment
from tests.runs import final_params
from tests.runs import main_command
from tests.runs import metrics
from tests.runs import run_main

SAVE_EVERY = ('--config.checkpoint_every_steps=2', '--config.eval_every_steps=3')


def completed_steps(workdir):
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def resumed_from(stderr):
  for line in stderr.splitlines():
    if 'Resumed from' in line:
      return int(line.rstrip('.').split('/')[-1])
  return 0


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kill_9_at_a_random_point_then_rerun_is_bit_identical(uninterrupted, tmp_path, seed):
  """SIGKILL at a random moment (seed 2: while a checkpoint is being written); the rerun
  redoes only the steps after the last complete checkpoint and ends bit-identical."""
  workdir = tmp_path / 'run'
  process = subprocess.Popen(main_command(workdir, *SAVE_EVERY), cwd=REPO,
                             env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  directory = checkpointing.checkpoint_dir(workdir)
  if seed == 2:  # The moment a temporary checkpoint directory appears.
    deadline = time.time() + 400
    while process.poll() is None and time.time() < deadline and not (
        os.path.isdir(directory) and any('tmp' in d for d in os.listdir(directory))):
      time.sleep(0.01)
  else:  # After the first checkpoint, a random delay.
    while process.poll() is None and not completed_steps(workdir):
      time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 8.0))
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = completed_steps(workdir)
  result = run_main(workdir, *SAVE_EVERY)
  assert resumed_from(result.stderr) == (max(saved) if saved else 0)
  step, params = final_params(workdir)
  assert step == 6
  assert_trees_equal(final_params(uninterrupted)[1], params)
  assert not [d for d in os.listdir(directory) if 'tmp' in d]  # Partial writes cleaned.


@pytest.mark.parametrize('damage', ['truncate', 'remove_entry'])
def test_corrupt_latest_checkpoint_is_reported_and_the_previous_used(uninterrupted, tmp_path,
                                                                     damage):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  latest = os.path.join(checkpointing.checkpoint_dir(workdir), '6')
  if damage == 'truncate':  # The largest file of the state: array data.
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(latest, 'state'))
             for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
  else:
    shutil.rmtree(os.path.join(latest, 'state'))
  result = run_main(workdir, *SAVE_EVERY)
  assert 'Checkpoint' in result.stderr and 'unreadable or incomplete' in result.stderr
  assert resumed_from(result.stderr) == 4
  assert [d for d in os.listdir(checkpointing.checkpoint_dir(workdir)) if '.corrupt-' in d]
  step, params = final_params(workdir)  # Steps 5 and 6 redone: the same parameters.
  assert step == 6
  assert_trees_equal(final_params(uninterrupted)[1], params)


def test_sigterm_saves_and_exits_cleanly_in_bounded_time(tmp_path):
  workdir = tmp_path / 'run'
  process = subprocess.Popen(
      main_command(workdir, '--config.checkpoint_every_steps=1000',
                   '--config.eval_every_steps=1000', steps=500), cwd=REPO,
      env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  jsonl = os.path.join(workdir, 'metrics.jsonl')
  while process.poll() is None and not (os.path.exists(jsonl) and os.path.getsize(jsonl)):
    time.sleep(0.05)
  start = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert time.time() - start < 60
  assert process.returncode == 0, stderr[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in stderr
  saved = completed_steps(workdir)
  assert len(saved) == 1 and 2 <= saved[0] < 500
  result = run_main(workdir, '--config.checkpoint_every_steps=1000',
                    '--config.eval_every_steps=1000', steps=saved[0] + 2)
  assert resumed_from(result.stderr) == saved[0]


def test_nan_with_skip_counts_the_skipped_steps(tmp_path):
  workdir = tmp_path / 'run'
  run_main(workdir, '--config.learning_rate=1e6', '--config.on_nan=skip',
           '--config.eval_every_steps=100', steps=8)
  last = [l for l in metrics(workdir) if 'loss' in l][-1]
  assert last['step'] == 8 and last['skipped_steps'] >= 1
  _, params = final_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_disk_full_at_save_time_keeps_earlier_checkpoints(uninterrupted, tmp_path):
  """A later save fails (files capped at 64 KiB, as a full disk would): a clear error, the
  earlier checkpoints intact, and a rerun with space resumes and ends bit-identical."""
  workdir = tmp_path / 'run'
  run_main(workdir, *SAVE_EVERY, steps=2)
  assert completed_steps(workdir) == [2]
  # Files capped at 64 KiB; SIGXFSZ ignored, so a write past the cap fails with EFBIG.
  limited = ['bash', '-c', 'ulimit -f 64; trap "" XFSZ; exec "$@"', 'bash',
             *main_command(workdir, *SAVE_EVERY)]
  result = subprocess.run(limited, cwd=REPO, env=environment(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode != 0
  assert 'Saving the checkpoint of step 4' in result.stderr
  assert 'Earlier checkpoints are intact (latest: 2)' in result.stderr
  assert completed_steps(workdir) == [2]
  result = run_main(workdir, *SAVE_EVERY)
  assert resumed_from(result.stderr) == 2
  assert_trees_equal(final_params(uninterrupted)[1], final_params(workdir)[1])


def test_no_space_is_an_error_before_training(tmp_path, monkeypatch):
  config = sample.get_config()
  config.data.image_size, config.data.resize_size = 67, 76
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, 'disk_usage', lambda _: usage._replace(free=10 * 2**20))
  with pytest.raises(OSError, match=r'10 MiB free; a checkpoint needs about \d+ MiB'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(checkpointing.checkpoint_dir(tmp_path / 'run'))


def test_unwritable_workdir_is_an_error_before_training(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(OSError, match='is not writable'):
    train.train_and_evaluate(sample.get_config(), str(blocker / 'run'))


@pytest.mark.parametrize('field,value,message', [
    ('learning_rate', -0.01, 'learning_rate=-0.01 must be positive'),
    ('batch_size', 6, 'batch_size=6 must be a positive multiple of the data axis size 4'),
    ('momentum', 1.5, r'momentum=1.5 must be in \[0, 1\)'),
    ('model.dropout_rate', 1.0, r'dropout_rate=1.0 must be in \[0, 1\)'),
    ('data.eval_views', 5, 'eval_views=5: use 1 or 10'),
    ('data.image_size', 300, 'image_size=300 must be positive and at most'),
    ('schedule', 'exponential', "schedule='exponential': use one of"),
    ('mesh.model', 4, 'mesh.model=4: use 2'),
    ('model.columns', 3, 'columns=3: use 1 or 2'),
    ('eval_every_steps', 0, 'eval_every_steps=0 must be >= 1'),
])
def test_impossible_config_values_fail_before_compute(tmp_path, field, value, message):
  config = sample.get_config()
  config.mesh.data = 4 if field == 'batch_size' else -1
  config.mesh.model = 1
  target = config
  *parents, name = field.split('.')
  for part in parents:
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('override,message', [
    ('--config.learning_rat=0.1', 'learning_rat'),
    ('--config.batch_size=many', 'batch_size'),
])
def test_unknown_fields_and_wrong_types_fail_before_compute(tmp_path, override, message):
  result = run_main(tmp_path / 'run', override, check=False)
  assert result.returncode != 0 and message in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_resuming_with_an_incompatible_config_says_what_differs(uninterrupted, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  result = run_main(workdir, '--config.model.num_classes=5', '--config.model.columns=1',
                    '--config.mesh.model=1', check=False)
  assert result.returncode != 0
  assert 'model.num_classes: checkpoint 10, config 5' in result.stderr
  assert 'model.columns: checkpoint 2, config 1' in result.stderr
  assert completed_steps(workdir) == [4, 6]
