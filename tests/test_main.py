"""The main job end to end on the embedded sample: metrics, checkpoints, resume, multi-host.

Each run is its own process, as a user's would be, with tiny settings (tests/runs.py).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from alexnet_jax import checkpointing
from alexnet_jax import partitioning
from alexnet_jax import steps
from configs import sample
from tests import runs
from tests.conftest import REPO
from tests.runs import assert_trees_equal
from tests.runs import environment
from tests.runs import final_params
from tests.runs import main_command
from tests.runs import metrics
from tests.runs import run_main


def test_main_writes_metrics_tensorboard_and_checkpoints(uninterrupted):
  lines = metrics(uninterrupted)
  train_lines = [l for l in lines if 'loss' in l]
  evals = [l for l in lines if 'eval_top1_error' in l]
  assert [l['step'] for l in train_lines] == [2, 4, 6]
  assert all(np.isfinite(l['loss']) and l['images_per_sec'] > 0 for l in train_lines)
  assert all(l['learning_rate'] == pytest.approx(0.0025) for l in train_lines)
  assert [l['step'] for l in evals] == [3, 6]
  assert all(0 <= l['eval_top1_error'] <= l['eval_top1_error'] + l['eval_top5_error'] <= 2
             and l['eval_top5_error'] <= l['eval_top1_error'] for l in evals)
  assert os.listdir(os.path.join(uninterrupted, 'tensorboard'))
  steps = sorted(int(d) for d in os.listdir(checkpointing.checkpoint_dir(uninterrupted))
                 if d.isdigit())
  assert steps == [4, 6]  # keep_checkpoints=2


def test_a_run_without_a_terminal_logs_progress_and_not_the_libraries(uninterrupted):
  """stderr is a pipe here, as under nohup or a scheduler: a progress line every
  log_every_steps (step/total, epoch, loss, learning rate, images/s, time left), our own
  lines, and none of orbax's INFO chatter."""
  log = (uninterrupted.parent / f'{uninterrupted.name}.stderr').read_text()
  progress = re.findall(r'step (\d+)/6 \(epoch [\d.]+\): loss [\d.]+, learning rate '
                        r'[\d.e-]+, \d+ images/s, \d+ min \d+ s left', log)
  assert progress == ['2', '4', '6']
  assert 'Mesh data=1 x model=1 over 1 cpu device(s)' in log
  assert 'step 6: eval (1 view(s), 200 examples) top-1 error' in log
  assert 'CPU settings applied: eigen_convolutions, synchronous_dispatch, keep_freed_memory' in log
  records = re.findall(r'^[IWE]\d{4} [\d:.]+ +\d+ (\w+)\.py:\d+\]', log, re.M)  # Python's.
  assert set(records) <= {'cpu_settings', 'console', 'main', 'partitioning', 'train',
                          'checkpointing'}, records
  assert len(records) < 20


def test_the_libraries_start_up_lines_are_not_shown(tmp_path):
  """TensorFlow's C++ prints its oneDNN notice and absl's as it loads (made to happen here:
  runs.WITH_STARTUP_NOISE); the run's first lines are its own."""
  result = run_main(tmp_path, steps=2, **runs.WITH_STARTUP_NOISE)
  runs.assert_no_startup_noise(result.stderr)
  assert 'step 2: eval (1 view(s), 200 examples)' in result.stderr


# 15 s: slow. The default suite checks that the libraries' lines are hidden (above).
@pytest.mark.slow
def test_library_logs_flag_shows_the_libraries(tmp_path):
  result = run_main(tmp_path, '--library_logs', steps=2, **runs.WITH_STARTUP_NOISE)
  assert 'checkpoint_manager.py' in result.stderr  # orbax's INFO lines.
  assert 'oneDNN custom operations are on' in result.stderr  # TensorFlow's start-up lines.


def test_model2_checkpoint_restores_on_model1_and_back(tmp_path):
  config = sample.get_config()
  config.data.image_size = 67
  mesh = lambda m: partitioning.create_mesh(ml_collections.ConfigDict({'data': -1, 'model': m}),
                                            jax.devices()[:2])
  for source, target in ((2, 1), (1, 2)):
    workdir = tmp_path / f'{source}to{target}'
    config.seed = source
    _, state = steps.initial_state(config, mesh(source))
    manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
    checkpointing.save(manager, 3, state, config)
    checkpointing.finish(manager)
    config.seed = 99  # A different initialisation, overwritten by the restore.
    _, fresh = steps.initial_state(config, mesh(target))
    manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
    restored, evaluated = checkpointing.restore_latest(manager, fresh, config)
    manager.close()
    assert evaluated
    assert int(restored.step) == 0 and restored.params['conv1']['kernel'].sharding.mesh.shape[
        'model'] == target
    assert_trees_equal(jax.device_get(state.params), jax.device_get(restored.params))
    assert_trees_equal(jax.device_get(state.opt_state), jax.device_get(restored.opt_state))
    params = checkpointing.restore_params(workdir, fresh.params, config)
    assert_trees_equal(jax.device_get(state.params), jax.device_get(params))


def test_incompatible_checkpoint_says_what_differs(uninterrupted):
  with pytest.raises(ValueError, match=r'model.num_classes: checkpoint 10, config 1000'):
    config = sample.get_config()
    config.model.num_classes = 1000
    abstract = {'conv1': {}}
    checkpointing.restore_params(uninterrupted, abstract, config)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_two_processes(workdir, overrides, steps):
  """Two processes of main on localhost (one CPU device each, JAX's distributed runtime)."""
  port = _free_port()
  return [subprocess.Popen(
      main_command(workdir, *overrides, steps=steps), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, env=environment(
          1, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
          JAX_PROCESS_ID=str(i))) for i in range(2)]


TWO_PROCESS_RUN = ['--config.checkpoint_every_steps=3', '--config.eval_every_steps=3']


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """3 steps in one process with two devices, a column each: what two processes match."""
  workdir = tmp_path_factory.mktemp('one_process')
  run_main(workdir, '--config.mesh.model=2', *TWO_PROCESS_RUN, steps=3, devices=2)
  return workdir


def assert_same_run(one, two):
  assert_trees_equal(final_params(one)[1], final_params(two)[1], rtol=1e-5)
  assert [l['step'] for l in metrics(one)] == [l['step'] for l in metrics(two)]
  np.testing.assert_allclose([l.get('eval_top1_error', 0) for l in metrics(one)],
                             [l.get('eval_top1_error', 0) for l in metrics(two)])


def test_two_processes_split_the_columns_and_match_one(one_process, tmp_path):
  """Two processes on localhost (one CPU device each, JAX's distributed runtime, started
  through its environment variables) with model=2: each holds one column, as the paper's
  two GPUs; they train as one process with two devices. The steps are compiled on both
  before the first collective, so a process that compiles late does not time out."""
  multi = tmp_path / 'multi'
  processes = start_two_processes(multi, ['--config.mesh.model=2', *TWO_PROCESS_RUN], 3)
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  assert 'process 1 of 2' in outputs[1]
  assert 'Mesh data=1 x model=2 over 2 cpu device(s)' in outputs[0]
  assert_same_run(one_process, multi)


def test_nan_loss_stops_naming_the_step_and_keeps_checkpoints(tmp_path):
  workdir = tmp_path / 'nan'
  result = run_main(workdir, '--config.learning_rate=1e6', '--config.checkpoint_every_steps=1',
                    '--config.eval_every_steps=100', '--config.on_nan=stop', steps=30,
                    check=False)
  assert result.returncode != 0
  assert 'FloatingPointError: Non-finite loss or gradients at step' in result.stderr
  step, params = final_params(workdir)
  assert f'latest: step {step})' in result.stderr
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))



# The longest default test (about 75 s on 2 cores): with -m slow, to keep the default suite
# under CI's 20 minutes. One process's SIGTERM is tested by default (test_reliability.py).
@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path):
  """Only process 1 is signalled; JAX's preemption service makes both stop at the same
  step and save it together (no hang in the collective save), then the rerun resumes."""
  overrides = ['--config.mesh.model=1', '--config.checkpoint_every_steps=1000',
               '--config.eval_every_steps=1000']
  workdir = tmp_path / 'run'
  processes = start_two_processes(workdir, overrides, steps=500)
  jsonl = workdir / 'metrics.jsonl'
  deadline = time.time() + 600
  while (processes[0].poll() is None and time.time() < deadline
         and not (jsonl.exists() and jsonl.stat().st_size)):
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  saved = [int(re.search(r'SIGTERM: saved a checkpoint at step (\d+)', o).group(1))
           for o in outputs]
  assert saved[0] == saved[1] < 500
  steps = sorted(int(d) for d in os.listdir(checkpointing.checkpoint_dir(workdir))
                 if d.isdigit())
  assert steps == [saved[0]]
  rerun = start_two_processes(workdir, overrides, steps=saved[0] + 2)
  outputs = [p.communicate(timeout=600)[0] for p in rerun]
  assert all(p.returncode == 0 for p in rerun), outputs[0][-3000:]
  assert f'checkpoints/{saved[0]}.' in outputs[0]  # "Resumed from .../<step>."
  assert final_params(workdir)[0] == saved[0] + 2


def test_a_dead_peer_ends_the_other_process_with_one_error_not_an_abort(tmp_path):
  """Process 1 killed (SIGKILL) after the first checkpoint: process 0's next collective
  fails (Gloo: connection reset); it says in one ERROR line that process 1 is gone, at
  which step, that the checkpoint is intact, and exits 1 at once, without waiting for
  the coordinator's heartbeat timeout and aborting (SIGABRT) at its end."""
  workdir = tmp_path / 'run'
  processes = start_two_processes(workdir, ['--config.mesh.model=1',
                                            '--config.checkpoint_every_steps=2',
                                            '--config.eval_every_steps=1000'], steps=500)
  directory = checkpointing.checkpoint_dir(workdir)
  deadline = time.time() + 600
  while (all(p.poll() is None for p in processes) and time.time() < deadline
         and not os.path.isdir(os.path.join(directory, '2'))):
    time.sleep(0.05)
  processes[1].kill()
  killed = time.time()
  output = processes[0].communicate(timeout=300)[0]
  processes[1].communicate()
  assert processes[0].returncode == 1, output[-3000:]  # Not -6 (SIGABRT).
  assert time.time() - killed < 60, output[-3000:]
  errors = [l for l in output.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 1, output[-3000:]
  found = re.search(r'ERROR: PeerLost: A peer process is gone: process 1 of 2 stopped '
                    r'answering at step (\d+) \(.*\); process 0 stops too\. The last '
                    r'checkpoint, step (\d+) in (\S+), is intact: start every process again '
                    r'with the same --workdir to resume\.', errors[0])
  assert found, errors[0]
  step, saved = int(found.group(1)), int(found.group(2))
  assert found.group(3) == directory and saved % 2 == 0 and 2 <= saved <= step < 500
  assert saved in [int(d) for d in os.listdir(directory) if d.isdigit()]
  assert 'Fatal Python error' not in output and 'Check failure' not in output


FAKE_SRUN = '''#!/bin/bash
# srun on one machine: SLURM_NTASKS local copies of the command, ranks 0 .. N-1.
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
'''


def _slurm_job_id():
  """A job id whose coordinator port (JAX: id % 4096 + 61440) is free here."""
  for job in range(1000, 5096):
    with socket.socket() as s:
      try:
        s.bind(('localhost', job % 4096 + 61440))
        return job
      except OSError:
        continue
  raise RuntimeError('no free port in 61440-65535')


# 40 s: slow. The default suite starts two processes through JAX's distributed runtime in
# test_two_processes_split_the_columns_and_match_one.
@pytest.mark.slow
def test_slurm_script_starts_two_processes_that_find_each_other(one_process, tmp_path):
  """scripts/slurm.sbatch as SLURM would run it on two nodes (srun emulated by two local
  tasks, SLURM's variables set): jax.distributed.initialize() finds the cluster itself,
  the batch is split between the processes (model=1), and they train as one process."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN)
  (bin_dir / 'srun').chmod(0o755)
  workdir = tmp_path / 'run'
  env = environment(1, SLURM_JOB_ID=str(_slurm_job_id()), SLURM_STEP_NODELIST='localhost',
                    SLURM_NTASKS='2', CONFIG='configs/sample.py', WORKDIR=str(workdir))
  env['PATH'] = f'{bin_dir}:{os.path.dirname(sys.executable)}:{env["PATH"]}'
  overrides = main_command(workdir, '--config.mesh.model=1', *TWO_PROCESS_RUN,
                           steps=3)[5:]  # The tiny settings, after --workdir.
  result = subprocess.run(['bash', 'scripts/slurm.sbatch', *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  for i in range(2):
    assert f'JAX process {i} of 2; 1 local / 2 global devices' in result.stderr
  assert 'Mesh data=2 x model=1 over 2 cpu device(s)' in result.stderr
  assert_same_run(one_process, workdir)
