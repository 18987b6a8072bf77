"""Faults that happen in practice, injected for real: nothing is lost, errors say what to do.

Bad images are covered in tests/test_input_pipeline.py; NaN stop, SIGKILL after a save and
incompatible checkpoints also in tests/test_main.py.
"""

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import checkpointing
from alexnet_jax import inference
from alexnet_jax import partitioning
from alexnet_jax import steps
from alexnet_jax import train
from configs import imagenette
from configs import sample
from tests.conftest import REPO
from tests.runs import assert_trees_equal
from tests.runs import environment
from tests.runs import final_params
from tests.runs import main_command
from tests.runs import metrics
from tests.runs import run_main

SAVE_EVERY = ('--config.checkpoint_every_steps=2', '--config.eval_every_steps=3')


def history(workdir):
  """metrics.jsonl without the timings, which differ from run to run."""
  return [{k: v for k, v in line.items() if k != 'images_per_sec'}
          for line in metrics(workdir)]


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


# Seed 2 kills while a checkpoint is being written; seed 0 (between saves) with -m slow.
@pytest.mark.parametrize('seed', [pytest.param(0, marks=pytest.mark.slow), 2])
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
  # metrics.jsonl holds one history: the redone steps' lines replaced, not repeated.
  assert history(workdir) == history(uninterrupted)


# Every kind of damage is restored around in-process (test_each_kind_of_damage_...); here
# through main end to end, one kind by default.
@pytest.mark.parametrize('damage', ['truncate', pytest.param('remove_entry',
                                                             marks=pytest.mark.slow)])
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
  assert 'Checkpoint' in result.stderr and 'is damaged' in result.stderr
  assert 'Event loop is closed' not in result.stderr and 'Traceback' not in result.stderr
  assert resumed_from(result.stderr) == 4
  assert [d for d in os.listdir(checkpointing.checkpoint_dir(workdir)) if '.corrupt-' in d]
  step, params = final_params(workdir)  # Steps 5 and 6 redone: the same parameters.
  assert step == 6
  assert_trees_equal(final_params(uninterrupted)[1], params)


# 16 s: slow. The default suite skips a non-finite step in one process:
# test_train.py's test_nonfinite_step_is_skipped_and_reported.
@pytest.mark.slow
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
  # One error a user reads first, then its detail: the libraries' own errors are single
  # lines without their tracebacks, and their asyncio noise is gone.
  errors = [l for l in result.stderr.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 1 and 'Saving the checkpoint of step 4' in errors[0]
  assert result.stderr.count('Traceback (most recent call last)') <= 2  # Ours, chained.
  assert 'Event loop is closed' not in result.stderr
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
    ('batch_size', 6, 'batch_size=6 must be a multiple of the data axis size 4'),
    ('momentum', 1.5, r'momentum=1.5 must be in \[0, 1\)'),
    ('model.dropout_rate', 1.0, r'dropout_rate=1.0 must be in \[0, 1\)'),
    ('data.eval_views', 5, r'eval_views=5 must be 1 \(centre\) or 10'),
    ('data.image_size', 300, 'image_size=300 must be positive and at most'),
    ('data.image_size', 10, 'image_size=10 is too small for the network .* The smallest '
     'that works is 6[0-9]'),
    ('model.lrn_size', 0, r'lrn_size=0 must be >= 1 \(the paper: 5\)'),
    ('model.pool_stride', 0, r'pool_stride=0 must be >= 1 \(the paper: 2\)'),
    ('model.num_classes', 1, 'num_classes=1 must be >= 2'),
    ('model.num_classes', 4, 'has 10 classes but config.model.num_classes=4: set '
     '--config.model.num_classes=10'),
    ('data.eval_split', 'valdation', r"eval_split='valdation': the dataset folder .* has "
     r"the splits \['train', 'validation'\]"),
    ('schedule', 'exponential', "schedule='exponential' must be one of"),
    ('mesh.model', 4, 'mesh.model=4 must be 2'),
    ('data.resize_mode', 'crop', "resize_mode='crop' must be one of"),
    ('data.mean', 'mean.txt', "mean='mean.txt' must be 'channel', 'image' or a .npy file"),
    ('model.columns', 3, 'columns=3 must be 1 or 2'),
    ('eval_every_steps', 0, 'eval_every_steps=0 must be >= 1'),
    ('precision', 'high', r"precision='high' must be one of \('highest', 'default'\)"),
    ('data.synthetic_examples', 0, 'synthetic_examples=0 must be >= 1'),
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


def test_imagenette_without_a_data_dir_is_an_error_not_the_sample(tmp_path):
  config = imagenette.get_config()
  with pytest.raises(ValueError, match="config.data.data_dir='' must name the folder's root"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_a_dataset_with_one_class_is_refused_before_compute(tmp_path):
  config = sample.get_config()
  for split in ('train', 'validation'):
    shutil.copytree(os.path.join(sample.SAMPLE_DIR, split, 'n01440764'),
                    tmp_path / 'data' / split / 'n01440764')
  config.data.data_dir = str(tmp_path / 'data')
  with pytest.raises(ValueError, match=r"has 1 class\(es\) \['n01440764'\]: a classifier "
                     'needs at least 2'):
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
  result = run_main(workdir, '--config.model.columns=1', '--config.mesh.model=1',
                    check=False)
  assert result.returncode != 0
  assert 'model.columns: checkpoint 2, config 1' in result.stderr
  assert completed_steps(workdir) == [4, 6]


# --------------------------------------------------------------------- safe resume --

def _files(directory):
  return [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]


def damage(step_dir, kind):
  """Damages a checkpoint on disk the way a crash, a full disk or bit rot would."""
  state = os.path.join(step_dir, 'state')
  biggest = max(_files(state), key=os.path.getsize)
  if kind == 'truncated array data':
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
  elif kind == 'missing array file':
    os.remove(biggest)
  elif kind == 'unreadable metadata':
    with open(os.path.join(state, '_METADATA'), 'w') as f:
      f.write('{"tree_metadata": {')
  elif kind == 'missing metadata':
    os.remove(os.path.join(state, '_METADATA'))
  elif kind == 'missing item':
    shutil.rmtree(state)
  elif kind == 'unreadable config':
    with open(os.path.join(step_dir, 'config', 'metadata'), 'w') as f:
      f.write('{"model": ')
  else:
    raise ValueError(kind)


DAMAGE = ['truncated array data', 'missing array file', 'unreadable metadata', 'missing metadata', 'missing item', 'unreadable config']


def fresh_state(workdir, step):
  """The run's config (from its step-`step` checkpoint) and a newly initialised state."""
  config = checkpointing.saved_config(workdir, step)
  mesh = partitioning.create_mesh(config.mesh, jax.devices()[:1], config.model.columns)
  return config, steps.initial_state(config, mesh)[1]


def restore(workdir, state, config):
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  try:
    return checkpointing.restore_latest(manager, state, config)
  finally:
    manager.close()


@pytest.fixture(scope='module')
def run_state(uninterrupted):
  return fresh_state(uninterrupted, 4)


@pytest.mark.parametrize('kind', DAMAGE)
def test_each_kind_of_damage_is_set_aside_and_the_previous_checkpoint_restored(
    uninterrupted, run_state, tmp_path, kind):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  directory = checkpointing.checkpoint_dir(workdir)
  damage(os.path.join(directory, '6'), kind)
  config, state = run_state
  restored, evaluated = restore(workdir, state, config)
  assert int(restored.step) == 4 and evaluated
  assert completed_steps(workdir) == [4]
  assert len([d for d in os.listdir(directory) if d.startswith('6.corrupt-')]) == 1
  expected, _ = restore(uninterrupted, state, config)  # Step 6, intact: not equal to 4.
  assert not np.array_equal(jax.device_get(expected.params['fc8']['kernel']),
                            jax.device_get(restored.params['fc8']['kernel']))


@pytest.mark.parametrize('error', [OSError(errno.EIO, 'Input/output error'),
                                   MemoryError('out of memory')],
                         ids=['EIO', 'MemoryError'])
def test_io_and_memory_errors_propagate_and_nothing_is_moved(uninterrupted, run_state,
                                                             tmp_path, monkeypatch, error):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  real = ocp.CheckpointManager.restore

  def failing(self, step, args=None, **kwargs):
    if 'state' in args:  # Reading the arrays fails, once.
      monkeypatch.setattr(ocp.CheckpointManager, 'restore', real)
      raise error
    return real(self, step, args=args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', failing)
  config, state = run_state
  with pytest.raises(type(error)):
    restore(workdir, state, config)
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ['4', '6']


def test_resuming_with_other_shapes_is_incompatible_and_nothing_is_moved(uninterrupted,
                                                                        tmp_path):
  """Trained at 67 x 67 (pool5 1 x 1), resumed at 99 x 99 (pool5 2 x 2): fc6 differs."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  before = (workdir / 'metrics.jsonl').read_bytes()
  result = run_main(workdir, '--config.data.image_size=99', '--config.data.resize_size=112',
                    check=False)
  assert result.returncode != 0
  assert ('params/fc6/kernel: checkpoint (256, 4096) float32, config (1024, 4096) float32'
          in result.stderr)
  assert 'opt_state/inner_state/3/trace/fc6/kernel' in result.stderr  # Optimizer state too.
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ['4', '6']
  assert (workdir / 'metrics.jsonl').read_bytes() == before


def test_every_checkpoint_damaged_is_an_error_not_a_restart(uninterrupted, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  before = (workdir / 'metrics.jsonl').read_bytes()
  for step in (4, 6):
    damage(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)),
           'truncated array data')
  result = run_main(workdir, check=False)
  assert result.returncode != 0
  assert 'Every checkpoint in' in result.stderr and 'steps [6, 4]' in result.stderr
  assert completed_steps(workdir) == []  # Both set aside; no training from step 0.
  assert (workdir / 'metrics.jsonl').read_bytes() == before


# ---------------------------------------------------------------- one writer, readers --

def _wait_for(predicate, process, timeout=600):
  deadline = time.time() + timeout
  while process.poll() is None and time.time() < deadline and not predicate():
    time.sleep(0.05)
  assert predicate(), 'the run ended or timed out first'


def test_a_second_run_is_refused_and_sigterm_saves_and_exits_in_bounded_time(tmp_path):
  """One run in progress: a second on its workdir is refused at once, naming the first,
  which goes on; a SIGTERM then saves a checkpoint and exits 0 within seconds, and the
  rerun resumes there."""
  workdir = tmp_path / 'run'
  args = ['--config.checkpoint_every_steps=1000', '--config.eval_every_steps=1000']
  first = subprocess.Popen(main_command(workdir, *args, steps=500), cwd=REPO,
                           env=environment(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  jsonl = workdir / 'metrics.jsonl'
  _wait_for(lambda: jsonl.exists() and jsonl.stat().st_size, first)
  second = run_main(workdir, check=False)
  assert second.returncode != 0
  assert (f'The workdir {workdir} is in use by another run (host {socket.gethostname()}, '
          f'pid {first.pid}, since') in second.stderr
  assert first.poll() is None  # The first run goes on, untouched.
  start = time.time()
  first.send_signal(signal.SIGTERM)
  _, stderr = first.communicate(timeout=120)
  assert time.time() - start < 60
  assert first.returncode == 0, stderr[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in stderr
  saved = completed_steps(workdir)
  assert len(saved) == 1 and 2 <= saved[0] < 500
  lines = metrics(workdir)  # One writer: every line whole, steps in order.
  assert [l['step'] for l in lines] == sorted(l['step'] for l in lines)
  # The lock dies with its process (kill -9 included: the SIGKILL tests rerun at once).
  result = run_main(workdir, *args, steps=saved[0] + 2)
  assert resumed_from(result.stderr) == saved[0]


def test_features_read_a_workdir_while_a_run_writes_it(tmp_path):
  workdir = tmp_path / 'run'
  writer = subprocess.Popen(
      main_command(workdir, '--config.checkpoint_every_steps=2', '--config.keep_checkpoints=2',
                   '--config.eval_every_steps=1000', steps=20), cwd=REPO,
      env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: len(completed_steps(workdir)) >= 1, writer)
  steps_read = []
  while writer.poll() is None:
    model, params, config = inference.load(str(workdir))
    steps_read.append(max(completed_steps(workdir) or [0]))
    assert params['fc8']['kernel'].shape == (4096, 10)
  assert writer.returncode == 0, writer.stderr.read()[-3000:]
  assert len(steps_read) >= 3, steps_read


def test_a_step_deleted_while_a_reader_lists_it_is_read_past(uninterrupted, tmp_path,
                                                              monkeypatch):
  """The writer's keep_checkpoints deletes a step between orbax's exists() and is_dir() of
  it, as the test above once met in CI (made to happen here): the reader lists again and
  reads the latest step."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  step4 = os.path.join(checkpointing.checkpoint_dir(workdir), '4')
  path_type = type(epath.Path(step4))
  exists, is_dir = path_type.exists, path_type.is_dir
  checked = []  # Paths orbax has seen exist.

  def exists_noted(self):
    found = exists(self)
    if found:
      checked.append(os.fspath(self))
    return found

  def deleted_after_exists(self):
    if os.fspath(self) == step4 and step4 in checked and os.path.isdir(step4):
      shutil.rmtree(step4)
    return is_dir(self)

  monkeypatch.setattr(path_type, 'exists', exists_noted)
  monkeypatch.setattr(path_type, 'is_dir', deleted_after_exists)
  raised, create = [], checkpointing.create_manager

  def create_recording(*args, **kwargs):
    try:
      return create(*args, **kwargs)
    except OSError as e:
      raised.append(type(e))
      raise

  monkeypatch.setattr(checkpointing, 'create_manager', create_recording)
  assert checkpointing.saved_config(str(workdir)).num_train_steps == 6
  assert raised == [NotADirectoryError] and completed_steps(workdir) == [6]


# ---------------------------------------------------------------------- preemption --

# 55 s: slow. The default suite's SIGTERM, during training, is in
# test_a_second_run_is_refused_and_sigterm_saves_and_exits_in_bounded_time.
@pytest.mark.slow
def test_sigterm_during_evaluation_saves_at_once_and_the_rerun_redoes_it(tmp_path):
  """The final 10-view evaluation (50 batches at 131 x 131) takes many seconds; a SIGTERM
  in it saves within a batch, and the rerun evaluates that step instead of skipping it."""
  workdir = tmp_path / 'run'
  args = ['--config.data.image_size=131', '--config.data.resize_size=150',
          '--config.data.eval_views=10', '--config.eval_batch_size=4',
          '--config.eval_every_steps=1000', '--config.checkpoint_every_steps=1000']
  process = subprocess.Popen(main_command(workdir, *args, steps=2), cwd=REPO,
                             env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  jsonl = workdir / 'metrics.jsonl'
  _wait_for(lambda: jsonl.exists() and any(l.get('step') == 2 for l in metrics(workdir)),
            process)
  start = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert time.time() - start < 30
  assert 'SIGTERM: saved a checkpoint at step 2 (its evaluation is redone on resume)' in stderr
  assert completed_steps(workdir) == [2]
  assert not [l for l in metrics(workdir) if 'eval_top1_error' in l]
  result = run_main(workdir, *args, steps=2)
  assert resumed_from(result.stderr) == 2
  evals = [l for l in metrics(workdir) if 'eval_top1_error' in l]
  assert [(l['step'], l['eval_views']) for l in evals] == [(2, 10)]


# ---------------------------------------------------------- metrics.jsonl on resume --

def test_a_cut_off_last_line_is_reported_and_its_evaluation_redone(uninterrupted, tmp_path):
  """The last line (step 6's evaluation) cut in half, as a kill or a full disk during the
  write leaves it, under a checkpoint that records the evaluation as done: the resume
  says what it dropped, redoes the evaluation, and the history is whole again."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  path = workdir / 'metrics.jsonl'
  lines = path.read_bytes().splitlines(keepends=True)
  assert b'"step": 6, "eval_top1_error"' in lines[-1]
  path.write_bytes(b''.join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
  result = run_main(workdir, *SAVE_EVERY)
  warnings = [l for l in result.stderr.splitlines() if l.startswith('W') and 'metrics' in l]
  assert len(warnings) == 1, result.stderr[-3000:]
  assert (f'{path}: dropped its last line, cut off' in warnings[0]
          and 'the evaluation of step 6 is redone' in warnings[0])
  assert 'step 6: eval (1 view(s), 200 examples)' in result.stderr
  assert history(workdir) == history(uninterrupted)
  assert completed_steps(workdir) == [4, 6]


@pytest.mark.parametrize('line,what', [
    (b'{"step": 2, "loss": \xff\xfe}\n', 'is not UTF-8 text'),
    (b'123\n', 'is not a JSON object with an integer "step"')], ids=['not UTF-8', 'not an object'])
def test_a_damaged_metrics_line_stops_the_resume_naming_it(uninterrupted, tmp_path, line, what):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  path = workdir / 'metrics.jsonl'
  lines = path.read_bytes().splitlines(keepends=True)
  damaged = b''.join(lines[:1] + [line] + lines[1:])
  path.write_bytes(damaged)
  result = run_main(workdir, *SAVE_EVERY, check=False)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert f'ValueError: {path}, line 2 {what}' in errors[0]
  assert 'fix or delete that line, or move the file aside' in errors[0]
  assert path.read_bytes() == damaged  # Nothing rewritten, nothing lost.
  assert completed_steps(workdir) == [4, 6]


def test_resume_compares_the_arrays_not_an_edited_saved_config(uninterrupted, tmp_path):
  """The saved config edited to num_classes 5 while the arrays hold 10: the arrays decide.
  A config of 10 resumes (a warning names the disagreement); one of 1000 is told the
  checkpoint holds 10."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  for step in (4, 6):
    path = os.path.join(checkpointing.checkpoint_dir(workdir), str(step), 'config', 'metadata')
    with open(path) as f:
      saved = json.load(f)
    saved['model']['num_classes'] = 5
    with open(path, 'w') as f:
      json.dump(saved, f)
  config = sample.get_config()
  config.model.num_classes = 1000
  with pytest.raises(ValueError, match=r'model.num_classes: checkpoint 10, config 1000'):
    checkpointing.restore_params(workdir, {'conv1': {}}, config)
  result = run_main(workdir, *SAVE_EVERY)  # Complete at step 6: restored and checked.
  assert 'checkpoint 5' not in result.stderr
  assert ('says model.num_classes=5, but its arrays hold 10; comparing the arrays'
          in result.stderr)
  assert resumed_from(result.stderr) == 6


# ------------------------------------------------------------- a save that fails --

def test_a_save_into_read_only_checkpoints_fails_in_seconds_naming_its_step(uninterrupted,
                                                                           tmp_path):
  """checkpoints/ read-only, the workdir writable: the save of step 8 fails; the run ends
  within seconds of the failure (orbax's waiters for the step directory would hold the
  process 300 s) with one error naming step 8 and the directory."""
  if os.geteuid() == 0 and not shutil.which('setpriv'):
    pytest.skip('root ignores permission bits; setpriv (util-linux) drops that privilege')
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  directory = checkpointing.checkpoint_dir(workdir)
  os.chmod(directory, 0o555)
  # As root, without the capabilities that bypass permission bits.
  drop = (['setpriv', '--bounding-set', '-dac_override,-dac_read_search']
          if os.geteuid() == 0 else [])
  try:
    result = subprocess.run(drop + main_command(workdir, *SAVE_EVERY, steps=10), cwd=REPO,
                            env=environment(), capture_output=True, text=True, timeout=600)
    ended = time.time()
  finally:
    os.chmod(directory, 0o755)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert (f'Saving the checkpoint of step 8 in {directory} failed (PermissionError: '
          in errors[0])
  assert f'Earlier checkpoints are intact (latest: 6). Make {directory} writable' in errors[0]
  failed = [l for l in result.stderr.splitlines() if 'Permission denied' in l and
            l.startswith('E')][0]  # orbax's log line at the failure: 'E1204 22:25:33.026'.
  stamp = time.strptime(f'{time.localtime().tm_year} {failed[1:5]} {failed[6:14]}',
                        '%Y %m%d %H:%M:%S')
  assert ended - time.mktime(stamp) < 30, result.stderr[-3000:]
  assert 'never awaited' not in result.stderr
  assert completed_steps(workdir) == [4, 6]
