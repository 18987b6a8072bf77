"""Training: the paper's procedure as a loop over named pieces.

The mesh and the layout live in `partitioning`, the state and the steps in `steps`, the
metrics history in `history`, SIGTERM and lost peers in `preemption`, and every checkpoint
call in `checkpointing`. This module checks a run, resumes it, and loops: a step, its
metrics, an evaluation, a checkpoint, each when due.
"""

import itertools
import os
import sys
import time
from typing import Any, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import checkpointing
from alexnet_jax import checks
from alexnet_jax import console
from alexnet_jax import history
from alexnet_jax import input_pipeline
from alexnet_jax import optimizer
from alexnet_jax import partitioning
from alexnet_jax import preemption
from alexnet_jax import steps
from alexnet_jax import synthetic


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
  """Trains and evaluates AlexNet; resumes from the latest checkpoint in `workdir`.

  Everything that can be checked is checked before any training: the config
  (checks.validate), the dataset (checks.check_data), the workdir (writable, not in use by
  another run, space for a checkpoint, a readable metrics history).
  """
  checks.validate(config)  # Imports the data's format, and TensorFlow with it (not synthetic's).
  _hide_accelerators_from_tensorflow()
  mesh = partitioning.create_mesh(config.mesh, columns=config.model.columns)
  checks.validate_mesh(config, mesh)
  num_train = checks.check_data(config)
  checkpointing.check_writable(workdir)
  release = checkpointing.lock_workdir(workdir)
  history.read(os.path.join(workdir, history.FILE))  # A damaged line: an error now.
  sigterm = preemption.Preemption()  # From here on a SIGTERM ends the run cleanly.
  try:
    steps_per_epoch, total_steps = optimizer.run_length(config, num_train)
    _, state, train_step, eval_step = steps.setup(config, mesh, steps_per_epoch)
    checkpointing.check_space(workdir, state)
    manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
    state, evaluated = checkpointing.restore_latest(manager, state, config)
    start_step = int(state.step)
    redo = _resume_history(workdir, config, start_step, total_steps, evaluated)
    if start_step >= total_steps and evaluated and not redo:
      logging.info('The run in %s is complete (step %d of %d).', workdir, start_step,
                   total_steps)
      checkpointing.finish(manager)
      return state
    logging.info('Training %d steps (%d per epoch) from step %d on a %s mesh.',
                 total_steps, steps_per_epoch, start_step, dict(mesh.shape))
    batches = create_split(
        config, mesh, config.data.train_split, global_batch_size=config.batch_size,
        train=True, seed=config.seed, start_step=start_step,
        image_size=config.data.image_size)
    first = next(batches)
    train_step, eval_step = steps.compile_steps(train_step, eval_step, state, config, mesh,
                                                first, config.data.eval_views)
    ocp.multihost.sync_global_processes('alexnet_jax: compiled', timeout=1800)
    is_main = jax.process_index() == 0
    run = Run(config, workdir, mesh, manager, eval_step, sigterm, total_steps,
              history.Writer(workdir, enabled=is_main),
              console.Progress(total_steps, 'train', start=start_step, every=None,
                               enabled=is_main))
    try:
      return _loop(run, state, train_step, first, batches, start_step, steps_per_epoch,
                   evaluate_first=not evaluated or redo, update_schedule=not evaluated)
    finally:
      run.progress.close()
      run.writer.close()
  finally:
    sigterm.close()
    release()


class Run(NamedTuple):
  """What the loop's pieces share: the run's settings and its open handles."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  manager: Any  # ocp.CheckpointManager
  eval_step: Any  # steps.make_eval_step's, compiled
  sigterm: preemption.Preemption
  total_steps: int
  writer: history.Writer
  progress: console.Progress


def _loop(run, state, train_step, first, batches, start_step, steps_per_epoch,
          evaluate_first, update_schedule):
  """Steps start_step + 1 .. total_steps, each followed by what is due after it: its
  metrics, an evaluation, a checkpoint; or, on SIGTERM, a checkpoint and the end.

  evaluate_first: evaluate start_step's parameters first (a new run, or an evaluation a
  resume must redo); update_schedule: let that evaluation update the plateau schedule
  (False where the restored schedule already holds it).
  """
  config, total = run.config, run.total_steps

  def due(step, every):
    return step % every == 0 or step == total

  late = LateMetrics(run)
  profile = Profile(config.profile_steps, start_step, total, run.workdir)
  step, peer_lost = start_step, None
  try:
    if evaluate_first:
      state, completed = evaluate_and_log(run, state, start_step, update_schedule)
      if not completed:
        save_and_exit(run, state, start_step, evaluated=False)
        return state
    t0, n0 = time.perf_counter(), start_step
    stream = itertools.chain([first], batches)
    for step in range(start_step + 1, total + 1):
      profile.before(step)
      state, metrics = train_step(state, partitioning.global_batch(run.mesh, next(stream)))
      profile.after(step, (state, metrics))
      checkpointing.check_saves(run.manager)  # A failed save ends the run now.
      late.add(step, metrics)
      run.progress.update()
      if due(step, config.log_every_steps):
        metrics = late.read()  # Waits for the step: the clock then times k finished steps.
        rate = (step - n0) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
        t0, n0 = time.perf_counter(), step
        log_train_metrics(run, step, steps_per_epoch, metrics, rate, late.skipped,
                          len(batches.skipped))
      evaluation_due = due(step, config.eval_every_steps)
      preempted = run.sigterm.reached()
      if evaluation_due and not preempted:
        state, completed = evaluate_and_log(run, state, step)
        preempted = not completed
      if preempted:
        late.read()
        save_and_exit(run, state, step, evaluated=not evaluation_due)
        break
      if evaluation_due:
        t0, n0 = time.perf_counter(), step  # Images/s of training alone.
      if due(step, config.checkpoint_every_steps):
        late.read()
        checkpointing.save(run.manager, step, state, config)
  except (jax.errors.JaxRuntimeError, ValueError) as e:
    peer_lost = preemption.peer_lost(e, step, run.manager)
    if peer_lost is None:
      raise
    raise peer_lost from e
  finally:
    profile.close()
    if peer_lost is None:  # A save in flight would wait for the dead peer.
      checkpointing.finish(run.manager)
  return state


def evaluate_and_log(run, state, step, update_schedule=True):
  """(state, completed): evaluates `state` at `step` and writes the result; with
  config.schedule='plateau' the schedule takes the error, except at the last step or with
  update_schedule=False. completed is False where a
  SIGTERM interrupted the evaluation. The last step's evaluation uses
  config.data.eval_views views (Section 4.1), the others the centre crop."""
  config = run.config
  last = step == run.total_steps
  views = config.data.eval_views if last else 1
  result = evaluate_split(run.eval_step, state.params, config, run.mesh, views,
                          run.sigterm.reached)
  if result is None:
    return state, False
  run.writer.write(step, dict(
      {f'eval_{k}': v for k, v in result.items() if k.endswith('_error')},
      eval_loss=result['loss'], eval_views=views))
  logging.info('step %d: eval (%d view(s), %d examples) top-1 error %.4f, top-%d error '
               '%.4f', step, views, result['count'], result['top1_error'],
               min(5, config.model.num_classes), result['top5_error'])
  if config.schedule == 'plateau' and not last and update_schedule:
    state = steps.set_plateau(state, config, result['top1_error'], run.mesh)
  return state, True


def save_and_exit(run, state, step, evaluated):
  """After a SIGTERM: saves `state` at `step` (evaluated: whether its evaluation is done)."""
  checkpointing.save(run.manager, step, state, run.config, evaluated=evaluated)
  logging.warning('SIGTERM: saved a checkpoint at step %d%s; exiting. Rerun with the same '
                  '--workdir to resume.', step,
                  '' if evaluated else ' (its evaluation is redone on resume)')


def log_train_metrics(run, step, steps_per_epoch, metrics, images_per_sec, skipped_steps,
                      skipped_images):
  """Writes a training step's metrics to the history and the console."""
  scalars = {k: metrics[k] for k in ('loss', 'train_top1_error', 'learning_rate')}
  scalars.update(images_per_sec=images_per_sec, skipped_steps=skipped_steps,
                 skipped_images=skipped_images)
  run.writer.write(step, scalars)
  run.progress.log(
      f'step {step}/{run.total_steps} (epoch {step / steps_per_epoch:.2f}): loss '
      f"{scalars['loss']:.4f}, learning rate {scalars['learning_rate']:.3g}, "
      f'{images_per_sec:.0f} images/s', loss=f"{scalars['loss']:.3f}",
      img_s=f'{images_per_sec:.0f}')


class LateMetrics:
  """The training steps' metrics, read from the device one step late, so that the host
  waits for the step it has just dispatched only where its metrics are due (a log line, a
  checkpoint, a stop); each read checks for a non-finite step.

  A non-finite step (its update was skipped by the step itself) stops the run with
  config.on_nan='stop', after the checkpoint saves in flight; with 'skip' it is counted.
  """

  def __init__(self, run):
    self.run = run
    self.skipped = 0  # Non-finite steps skipped.
    self._held = None  # (step, metrics on the device), not read yet.

  def add(self, step, metrics):
    """Reads the step held so far; holds this one."""
    self.read()
    self._held = (step, metrics)

  def read(self):
    """The held step's metrics as NumPy, checked; None if none is held."""
    if self._held is None:
      return None
    (step, metrics), self._held = self._held, None
    metrics = jax.device_get(metrics)
    if metrics['nonfinite']:
      if self.run.config.on_nan == 'stop':
        checkpointing.wait(self.run.manager)
        latest = self.run.manager.latest_step()
        kept = 'none saved yet' if latest is None else f'latest: step {latest}'
        raise FloatingPointError(
            f'Non-finite loss or gradients at step {step} (loss={metrics["loss"]}); the '
            f'update was not applied and training stopped. Checkpoints in {self.run.workdir} '
            f"are kept ({kept}). Lower the learning rate, or set config.on_nan='skip' to "
            'skip such steps.')
      self.skipped += 1
    return metrics


class Profile:
  """A trace of the steps config.profile_steps names (profile_window), to workdir/profile."""

  def __init__(self, profile_steps, start_step, total_steps, workdir):
    self.first, self.last = profile_window(profile_steps, start_step, total_steps)
    self.directory = os.path.join(workdir, 'profile')
    self.tracing = False

  def before(self, step):
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step, outputs):
    if step == self.last:
      jax.block_until_ready(outputs)
      self.close()
      logging.info('Wrote a profile of steps %d-%d to %s.', self.first, self.last,
                   self.directory)

  def close(self):
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False


def profile_window(profile_steps, start_step, total_steps):
  """(first, last): the steps of config.profile_steps = (start, stop) this run traces,
  start..stop as the logs number them, from start_step + 1 on a resume; (0, -1) for none."""
  if not profile_steps:
    return 0, -1
  first, last = max(profile_steps[0], start_step + 1), min(profile_steps[1], total_steps)
  return (first, last) if first <= last else (0, -1)


def _resume_history(workdir, config, start_step, total_steps, evaluated):
  """Cuts metrics.jsonl back to start_step (history.resume); whether the evaluation of
  start_step must be redone: the checkpoint records it done, but the history lost it. The
  main process decides, for every process."""
  due = evaluated and start_step > 0 and (start_step % config.eval_every_steps == 0
                                          or start_step == total_steps)
  redo = jax.process_index() == 0 and history.resume(
      os.path.join(workdir, history.FILE), start_step, due)
  if jax.process_count() > 1:
    redo = bool(multihost_utils.broadcast_one_to_all(np.int32(redo)))
  return redo


def create_split(config, mesh, split, **kwargs):
  """This process's batches of `split`: input_pipeline.create_split's (NumPy, this
  process's rows), or for data.dataset='synthetic' global arrays made on the device."""
  if config.data.dataset == synthetic.DATASET:
    return synthetic.create_split(config, mesh, split, **kwargs)
  return input_pipeline.create_split(config.data, split,
                                     shard=partitioning.data_shard(mesh), **kwargs)


def evaluate_split(eval_step, params, config, mesh, num_views, stop=lambda: False):
  """Top-1/top-5 error and loss over the whole eval split, each example counted once:
  {'top1_error', 'top5_error', 'loss', 'count'}, with views also 'centre_top1_error' and
  'centre_top5_error'.

  stop() is asked after every batch; when it says True the evaluation is abandoned and
  None returned (a preempted run saves and exits within a batch's time).
  """
  totals = None
  batches = create_split(
      config, mesh, config.data.eval_split, global_batch_size=config.eval_batch_size,
      train=False, seed=config.seed, image_size=config.data.image_size,
      num_views=num_views)
  for batch in batches:
    sums = eval_step(params, partitioning.global_batch(mesh, batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if stop():
      return None
  totals = jax.device_get(totals)
  count = float(totals['count'])
  errors = {k.replace('correct', 'error'): 1.0 - v / count for k, v in totals.items()
            if k.endswith('_correct')}
  return dict(errors, loss=totals['loss'] / count, count=count)


def _hide_accelerators_from_tensorflow():
  """tf.data reads the data on the host: where a data source has imported TensorFlow, hide
  the GPUs from it, so that it takes none of their memory from JAX."""
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    tf.config.set_visible_devices([], 'GPU')
