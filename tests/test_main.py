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
from alexnet_jax import models
from alexnet_jax import optimizer
from alexnet_jax import train
from configs import sample
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


def test_sigkill_and_rerun_is_bit_identical_to_uninterrupted(uninterrupted, tmp_path):
  """Killed with SIGKILL after the step-4 checkpoint, rerun: same final parameters."""
  workdir = tmp_path / 'killed'
  process = subprocess.Popen(
      main_command(workdir, '--config.checkpoint_every_steps=2',
                   '--config.eval_every_steps=3', steps=6), cwd=REPO,
      env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoint = os.path.join(checkpointing.checkpoint_dir(workdir), '4')
  deadline = time.time() + 500
  while not os.path.isdir(checkpoint) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert os.path.isdir(checkpoint), 'the run ended before its step-4 checkpoint'
  run_main(workdir, '--config.checkpoint_every_steps=2', '--config.eval_every_steps=3')
  step, params = final_params(workdir)
  assert step == 6
  assert_trees_equal(final_params(uninterrupted)[1], params)
  resumed = [l for l in metrics(workdir) if 'loss' in l]
  assert resumed[-1]['step'] == 6


def test_model2_checkpoint_restores_on_model1_and_back(tmp_path):
  config = sample.get_config()
  config.data.image_size = 67
  model = models.AlexNet(**config.model)
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 10))
  mesh = lambda m: train.create_mesh(ml_collections.ConfigDict({'data': -1, 'model': m}),
                                     jax.devices()[:2])
  for source, target in ((2, 1), (1, 2)):
    workdir = tmp_path / f'{source}to{target}'
    config.seed = source
    state = train.create_train_state(config, model, tx, mesh(source))
    manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
    checkpointing.save(manager, 3, state, config)
    checkpointing.finish(manager)
    config.seed = 99  # A different initialisation, overwritten by the restore.
    fresh = train.create_train_state(config, model, tx, mesh(target))
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


@pytest.mark.parametrize('model_size', [1, 2])
def test_two_processes_match_one(tmp_path, model_size):
  """Two processes on localhost (one CPU device each, JAX's distributed runtime) train as
  one process with two devices: model=1 splits the batch between them, model=2 the
  columns."""
  overrides = [f'--config.mesh.model={model_size}', '--config.checkpoint_every_steps=3',
               '--config.eval_every_steps=3']
  single = tmp_path / 'single'
  run_main(single, *overrides, steps=3, devices=2)
  multi = tmp_path / 'multi'
  processes = start_two_processes(multi, overrides, steps=3)
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  assert 'process 1 of 2' in outputs[1]
  assert_trees_equal(final_params(single)[1], final_params(multi)[1], rtol=1e-5)
  one, two = metrics(single), metrics(multi)
  assert [l['step'] for l in one] == [l['step'] for l in two]
  np.testing.assert_allclose([l.get('eval_top1_error', 0) for l in one],
                             [l.get('eval_top1_error', 0) for l in two])


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


def test_slurm_script_starts_two_processes_that_find_each_other(tmp_path):
  """scripts/slurm.sbatch as SLURM would run it on two nodes (srun emulated by two local
  tasks, SLURM's variables set): jax.distributed.initialize() finds the cluster itself."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN)
  (bin_dir / 'srun').chmod(0o755)
  (bin_dir / 'python').symlink_to(sys.executable)
  workdir = tmp_path / 'run'
  env = environment(1, SLURM_JOB_ID=str(_slurm_job_id()), SLURM_STEP_NODELIST='localhost',
                    SLURM_NTASKS='2', CONFIG='configs/sample.py', WORKDIR=str(workdir))
  env['PATH'] = f'{bin_dir}:{env["PATH"]}'
  overrides = main_command(workdir, '--config.mesh.model=1', '--config.eval_every_steps=3',
                           steps=3)[5:]  # The tiny settings, after --workdir.
  result = subprocess.run(['bash', 'scripts/slurm.sbatch', *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  for i in range(2):
    assert f'JAX process {i} of 2; 1 local / 2 global devices' in result.stderr
  assert 'Mesh data=2 x model=1 over 2 cpu device(s)' in result.stderr
  assert final_params(workdir)[0] == 3
