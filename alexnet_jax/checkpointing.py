"""Orbax checkpoints: save, resume from the latest good one, restore parameters alone.

A checkpoint is `<workdir>/checkpoints/<step>/` with two items: 'state' (the whole
TrainState: step, params, optimizer and plateau state) and 'config' (the run's config as
JSON, so a restore can say what differs). Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a run killed mid-save leaves the earlier ones
intact. Arrays are restored into whatever sharding the caller's abstract tree asks for:
a checkpoint written on a model=2 mesh restores on one device and back.
"""

import os
import shutil
import socket
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

# Config fields that change the shapes or meaning of the parameters.
_MODEL_FIELDS = ('num_classes', 'columns')


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def check_writable(workdir):
  """Fails before any compute when `workdir` cannot take checkpoints."""
  # One probe per process: processes of a multi-host run share the workdir.
  probe = os.path.join(workdir, f'.write_test.{socket.gethostname()}.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise OSError(f'The workdir {workdir!r} is not writable ({e.strerror}); checkpoints '
                  'could not be saved. Choose another --workdir or free space.') from e


def check_space(workdir, state):
  """Fails before training when the disk cannot hold another checkpoint of `state`."""
  need = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, 'nbytes'))
  free = shutil.disk_usage(workdir).free
  if free < need * 1.2:
    raise OSError(f'The disk of {workdir!r} has {free / 2**20:.0f} MiB free; a checkpoint '
                  f'needs about {need / 2**20:.0f} MiB. Free space or choose another '
                  '--workdir.')


def create_manager(workdir, config):
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), item_names=('state', 'config'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                           create=True, cleanup_tmp_directories=True))


def _save_failed(manager, step, workdir, error):
  # The failed save is the one whose temporary directory orbax left behind.
  for name in os.listdir(manager.directory):
    if '.orbax-checkpoint-tmp' in name and name.split('.')[0].isdigit():
      step = int(name.split('.')[0])
  good = [s for s in manager.all_steps() if s != step]
  return OSError(
      f'Saving the checkpoint of step {step} in {checkpoint_dir(workdir)} failed ({error}). '
      f'Earlier checkpoints are intact (latest: {max(good) if good else "none"}): free '
      'space or fix the disk, then rerun with the same --workdir to resume.')


def save(manager, step, state, config, workdir=''):
  """Saves asynchronously; `finish` (or the next save) makes it final.

  Orbax writes into a temporary directory and renames it when complete, so a failed or
  interrupted save leaves the earlier checkpoints as they were.
  """
  if step in manager.all_steps():
    return
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config.to_dict())))
  except Exception as e:  # pylint: disable=broad-except
    raise _save_failed(manager, step, workdir, e) from e


def finish(manager, workdir=''):
  """Waits for the last save and closes the manager; a failed save is a clear error."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_failed(manager, manager.latest_step(), workdir, e) from e
  finally:
    manager.close()


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_compatible(saved, config, directory):
  """Raises if the saved run's network differs from `config`'s in shape or meaning."""
  diffs = [f'model.{k}: checkpoint {saved["model"][k]!r}, config {config.model[k]!r}'
           for k in _MODEL_FIELDS if saved['model'].get(k) != config.model[k]]
  if diffs:
    raise ValueError(f'The checkpoint in {directory} was written by an incompatible '
                     f'network: {"; ".join(diffs)}. Use a matching config or another '
                     'workdir.')


def _set_aside(manager, step, error):
  """Renames an unreadable checkpoint to <step>.corrupt-<time>, kept for inspection."""
  path = os.path.join(str(manager.directory), str(step))
  aside = f'{path}.corrupt-{int(time.time())}'
  if jax.process_index() == 0:
    os.rename(path, aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  manager.reload()
  logging.error('Checkpoint %s is unreadable or incomplete (%s: %s); moved it to %s and '
                'trying the previous one.', path, type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else '', aside)


def restore_latest(manager, state, config):
  """Returns the latest good checkpoint's state, or `state` when there is none.

  `state` gives the structure and the target shardings. A checkpoint that fails to
  restore (truncated file, missing entry) is reported and the one before it is used.
  """
  directory = manager.directory
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved_config = manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    check_compatible(saved_config, config, directory)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(state))))['state']
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(manager, step, e)
      continue
    logging.info('Resumed from %s/%d.', directory, step)
    return restored
  return state


def restore_params(workdir, params, config=None, step=None):
  """Restores only the parameters saved in `workdir` (latest step unless `step`).

  `params`: a tree (arrays or jax.ShapeDtypeStruct with shardings) giving the structure
  and target placement, e.g. a freshly initialised model's on any mesh. With `config`, the
  saved network is checked to be compatible first. Returns the parameters.
  """
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir), item_names=('state', 'config'),
      options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {checkpoint_dir(workdir)}: train first with '
                            f'`python -m alexnet_jax.main --workdir={workdir}`.')
  if config is not None:
    saved = manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']
    check_compatible(saved, config, manager.directory)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={'params': _abstract(params)},
      restore_args=ocp.checkpoint_utils.construct_restore_args({'params': _abstract(params)}),
      partial_restore=True)))['state']
  manager.close()
  return restored['params']


def saved_config(workdir, step=None):
  """The ConfigDict a checkpoint was written with."""
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir), item_names=('state', 'config'),
      options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {checkpoint_dir(workdir)}.')
  saved = manager.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))['config']
  manager.close()
  return ml_collections.ConfigDict(saved)
