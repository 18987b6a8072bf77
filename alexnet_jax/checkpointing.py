"""Orbax checkpoints and the workdir that holds them: one writer, save, resume, restore.

A checkpoint is `<workdir>/checkpoints/<step>/` with three items: 'state' (the whole
TrainState: step, params, optimizer and plateau state), 'config' (the run's config as JSON,
so a restore can say what differs) and 'progress' ({'evaluated': bool}: whether the
evaluation due at that step is done; a run preempted during an evaluation saves False and
the rerun redoes it). Orbax writes each checkpoint to a temporary directory and renames it
when complete, so a run killed mid-save leaves the earlier ones intact. Arrays are restored
into whatever sharding the caller's abstract tree asks for: a checkpoint written on a
model=2 mesh restores on one device and back.

What a restore does with each kind of failure (`restore_latest`, `restore_params`):

* Damaged (an item or file missing, metadata that does not parse, array data truncated or
  failing decompression: TensorStore's NOT_FOUND, OUT_OF_RANGE, DATA_LOSS or
  FAILED_PRECONDITION): reported, and the previous checkpoint is used. A training run moves
  the damaged one to `<step>.corrupt-<time>`; readers (features, evaluation) move nothing.
* Written by another network (model fields, or any parameter or optimizer-state array of
  another structure, shape or dtype): a ValueError saying what differs, before anything
  is moved.
* Anything else (an I/O error, memory): raised as it is; nothing is moved.
* Every checkpoint of a workdir damaged: an error. A workdir that holds checkpoints never
  silently restarts from step 0.

One writer per workdir: `lock_workdir` takes an OS lock (flock) that the kernel releases
when the process ends, kill -9 included; a second run on the same workdir is refused at
once with the holder's host and pid.
"""

import fcntl
import json
import os
import shutil
import socket
import threading
import time
import warnings
import weakref

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint._src.futures import future as ocp_future

ITEMS = ('state', 'config', 'progress')
# Config fields that change the shapes or meaning of the parameters.
_MODEL_FIELDS = ('num_classes', 'columns')
# TensorStore status codes that mean the bytes on disk are missing or damaged.
_DAMAGE_CODES = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS', 'FAILED_PRECONDITION')


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock."""


class DamagedCheckpoint(Exception):
  """A checkpoint's files are missing, truncated or unreadable."""


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def lock_workdir(workdir):
  """Makes this process the workdir's one writer until it ends; returns a release().

  flock(2) on `<workdir>/.lock.<process index>` (one file per process of a multi-host run,
  which share the workdir). The kernel drops the lock when the process dies, kill -9
  included, so a killed run never leaves it stuck. The file holds the holder's host, pid
  and start time, which the refusal names.
  """
  path = os.path.join(workdir, f'.lock.{jax.process_index()}')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 4096, 0).decode(errors='replace').strip() or 'unknown'
    os.close(fd)
    raise WorkdirBusy(
        f'The workdir {workdir} is in use by another run ({holder}). Wait for it to end or '
        'stop it, or choose another --workdir.') from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, (f'host {socket.gethostname()}, pid {os.getpid()}, since '
                 f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode(), 0)

  def release():
    os.close(fd)  # Closing the descriptor drops the lock.

  return release


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


def create_manager(workdir, keep=None, *, read_only=False):
  """The CheckpointManager of `workdir`/checkpoints: a writer keeping `keep`, or a reader
  (which restores parts of the state: PyTreeCheckpointHandler, the same format)."""
  state_handler = ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
  handlers = {'state': state_handler,
              'config': ocp.JsonCheckpointHandler(),
              'progress': ocp.JsonCheckpointHandler()}
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                               item_handlers=handlers, options=options)


# The step of each manager's save still being written in the background.
_PENDING = weakref.WeakKeyDictionary()


def _release_orbax_waiters():
  """Lets orbax's commit threads of a failed save end now.

  A save's commit threads wait for the signal that its temporary directory exists; when
  creating it fails, each waits orbax's coordination timeout (not configurable), and
  Python waits for them at exit. Each is cancelled, then sent the signals it waits for, so
  it returns without writing (orbax 0.12.8's _SignalingThread.run checks the cancellation
  after its wait). Their coroutines, never run, are not reported at exit.
  """
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  # pylint: disable=protected-access
  signaling = getattr(ocp_future, '_SignalingThread', None)  # Absent: nothing to release.
  for thread in threading.enumerate():
    if signaling and isinstance(thread, signaling) and thread.is_alive():
      thread.cancel()
      try:
        ocp_future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
      except jax.errors.JaxRuntimeError:  # The coordination service is gone too.
        pass
  # pylint: enable=protected-access


def _save_failed(manager, step, error):
  _release_orbax_waiters()
  _PENDING.pop(manager, None)
  good = [s for s in manager.all_steps() if s != step]
  return OSError(
      f'Saving the checkpoint of step {step} in {manager.directory} failed '
      f'({first_line(error)}). Earlier checkpoints are intact (latest: '
      f'{max(good) if good else "none"}). Make {manager.directory} writable or free space '
      'on its disk, then rerun with the same --workdir to resume.')


def wait(manager):
  """Waits for the save in progress; its failure is a clear error naming its step."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_failed(manager, _PENDING.get(manager), e) from e
  _PENDING.pop(manager, None)


def latest_complete(manager):
  """The latest step whose checkpoint is complete, or None: orbax renames a checkpoint's
  temporary directory to <step> once its files are written, so a save in flight has none."""
  steps = [s for s in manager.all_steps()
           if os.path.isdir(os.path.join(str(manager.directory), str(s)))]
  return max(steps) if steps else None


def check_saves(manager):
  """Raises if the save in the background has failed, else returns at once: called after
  every step, so a failed save ends the run within a step."""
  if manager in _PENDING and not manager.is_saving_in_progress():
    wait(manager)


def save(manager, step, state, config, *, evaluated=True):
  """Saves asynchronously; `finish` (or the next save) makes it final.

  evaluated: whether the evaluation due at `step` (if any) is done; False makes the
  resumed run redo it. A failed save, this one or the one before it, is an OSError naming
  its step.
  """
  if step in manager.all_steps():
    return
  wait(manager)  # The previous save: its failure is its own step's.
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config.to_dict()),
        progress=ocp.args.JsonSave({'evaluated': bool(evaluated)})))
  except Exception as e:  # pylint: disable=broad-except
    raise _save_failed(manager, step, e) from e
  _PENDING[manager] = step


def finish(manager):
  """Waits for the last save and closes the manager; a failed save is a clear error."""
  try:
    wait(manager)
  finally:
    manager.close()


def check_compatible(saved, config, directory):
  """Raises if the saved run's network differs from `config`'s in shape or meaning.

  saved: the checkpoint's model fields ({'model': {...}}), as `_stored_model` reads them
  from its arrays (or as its saved config says, where the arrays do not say).
  """
  diffs = [f'model.{k}: checkpoint {saved["model"][k]!r}, config {config.model[k]!r}'
           for k in _MODEL_FIELDS if saved['model'].get(k) != config.model[k]]
  if diffs:
    raise ValueError(f'The checkpoint in {directory} was written by an incompatible '
                     f'network: {"; ".join(diffs)}. Use a matching config or another '
                     'workdir.')


# ------------------------------------------------------------------- reading one step --

def first_line(error):
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0][:300] if text else ""}'


def _damage(error):
  """The error in `error`'s chain that says the checkpoint's bytes are missing or bad
  (TensorStore's status, a JSON error, a missing file), or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (json.JSONDecodeError, FileNotFoundError, DamagedCheckpoint)):
      return error
    if isinstance(error, ValueError) and str(error).lstrip().startswith(_DAMAGE_CODES):
      return error
    error = error.__cause__ or error.__context__
  return None


def _read(manager, step, what, **args):
  """manager.restore of one step's items; damage becomes DamagedCheckpoint."""
  step_dir = os.path.join(str(manager.directory), str(step))
  missing = [name for name in args if not os.path.isdir(os.path.join(step_dir, name))]
  if missing:
    raise DamagedCheckpoint(f'item(s) {missing} missing')
  try:
    return manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # pylint: disable=broad-except
    if _damage(e) is not None:
      raise DamagedCheckpoint(f'{what}: {first_line(_damage(e))}') from e
    raise


def _layout(tree):
  """{path: (shape, dtype)} of a tree of arrays / ShapeDtypeStructs / orbax metadata."""
  flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))
  return {'/'.join(map(str, k)): (tuple(v.shape), str(v.dtype)) for k, v in flat.items()}


def _stored_layout(manager, step, subtree=None):
  """{path: (shape, dtype)} of the arrays a checkpoint holds, from its metadata (no array
  read); paths under `subtree` ('params') relative to it."""
  try:
    metadata = manager.item_metadata(step)['state']
  except Exception as e:  # pylint: disable=broad-except
    if _damage(e) is not None or isinstance(e, KeyError):
      raise DamagedCheckpoint(f'state metadata: {first_line(_damage(e) or e)}') from e
    raise
  if metadata is None or getattr(metadata, 'tree', None) is None:
    raise DamagedCheckpoint('state metadata missing')
  stored = _layout(metadata.tree)
  if subtree is not None:
    stored = {k[len(subtree) + 1:]: v for k, v in stored.items() if k.startswith(subtree + '/')}
  return stored


def _stored_model(manager, step, stored, prefix=''):
  """The model fields a checkpoint's arrays hold ({'model': {...}}), read from their
  shapes: num_classes is fc8's width; columns is conv1's channels over the channels each
  conv2 kernel sees. A saved config that says otherwise (edited, or mixed up) is named in
  a warning; the arrays are what a restore would load."""
  saved = _read(manager, step, 'config', config=ocp.args.JsonRestore())['config']
  model = dict(saved.get('model', {}))
  fc8, conv1, conv2 = (stored.get(f'{prefix}{name}/kernel')
                       for name in ('fc8', 'conv1', 'conv2'))
  from_arrays = {}
  if fc8 is not None:
    from_arrays['num_classes'] = fc8[0][-1]
  if conv1 is not None and conv2 is not None and conv2[0][-2]:
    from_arrays['columns'] = conv1[0][-1] // conv2[0][-2]
  for k, v in from_arrays.items():
    if model.get(k) != v:
      logging.warning('The saved config of checkpoint %s/%d says model.%s=%r, but its '
                      'arrays hold %r; comparing the arrays.', manager.directory, step, k,
                      model.get(k), v)
    model[k] = v
  return {'model': model}


def _check_layout(manager, step, target, stored):
  """Compares the stored arrays' structure, shapes and dtypes with `target`'s."""
  wanted = _layout(target)
  diffs = ([f'{k}: checkpoint {stored[k][0]} {stored[k][1]}, config {wanted[k][0]} '
            f'{wanted[k][1]}' for k in sorted(set(stored) & set(wanted))
            if stored[k] != wanted[k]]
           + [f'{k}: only in the checkpoint' for k in sorted(set(stored) - set(wanted))]
           + [f'{k}: not in the checkpoint' for k in sorted(set(wanted) - set(stored))])
  if diffs:
    more = f' (and {len(diffs) - 6} more)' if len(diffs) > 6 else ''
    raise ValueError(
        f'The checkpoint {manager.directory}/{step} was written by a run with another '
        f'network or optimizer: {"; ".join(diffs[:6])}{more}. Resume with the config it was '
        'written with (its config is saved beside it: checkpointing.saved_config), or use '
        'another --workdir.')


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _set_aside(manager, step, error):
  """Renames a damaged checkpoint to <step>.corrupt-<time>, kept for inspection."""
  path = os.path.join(str(manager.directory), str(step))
  aside = f'{path}.corrupt-{int(time.time())}'
  if jax.process_index() == 0:
    os.rename(path, aside)
  ocp.multihost.sync_global_processes(f'set aside checkpoint {step}')
  manager.reload()
  logging.error('Checkpoint %s is damaged (%s); moved it to %s and trying the previous '
                'one.', path, error, aside)


def _latest_good(manager, read, *, set_aside):
  """read(step) on the latest step whose checkpoint is not damaged -> (step, result).

  A reader (set_aside=False) whose step was deleted under it by the writer (max_to_keep)
  starts again from the writer's new latest step.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, read(step)
    except DamagedCheckpoint as e:
      if not set_aside and not os.path.isdir(os.path.join(str(manager.directory), str(step))):
        manager.reload()
        return _latest_good(manager, read, set_aside=False)
      damaged.append(step)
      if set_aside:
        _set_aside(manager, step, e)
      else:
        logging.error('Checkpoint %s/%d is damaged (%s); using the previous one.',
                      manager.directory, step, e)
  if damaged:
    where = 'moved to <step>.corrupt-<time>' if set_aside else 'left in place'
    raise DamagedCheckpoint(
        f'Every checkpoint in {manager.directory} is damaged (steps {damaged}, {where}); '
        'nothing to resume from. Remove them to start this run again from step 0, or use '
        'another --workdir.')
  return None, None


def restore_latest(manager, state, config):
  """(state, evaluated) from the latest good checkpoint; (`state`, True) when there is none.

  `state` gives the structure and the target shardings; `evaluated` says whether the
  evaluation due at the restored step was done. See the module docstring for what
  happens with damaged or incompatible checkpoints.
  """
  abstract = _abstract(state)

  def read(step):
    stored = _stored_layout(manager, step)
    check_compatible(_stored_model(manager, step, stored, 'params/'), config,
                     manager.directory)
    _check_layout(manager, step, abstract, stored)
    items = _read(manager, step, 'state', state=ocp.args.StandardRestore(abstract),
                  progress=ocp.args.JsonRestore())
    return items['state'], items['progress']['evaluated']

  step, result = _latest_good(manager, read, set_aside=True)
  if step is None:
    return state, True
  logging.info('Resumed from %s/%d.', manager.directory, step)
  return result


def _reader(workdir, attempts=5):
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f'No checkpoint in {checkpoint_dir(workdir)}: train first with '
                            f'`python -m alexnet_jax.main --workdir={workdir}`.')
  for attempt in range(attempts):
    try:
      return create_manager(workdir, read_only=True)
    # A step the writer deleted (max_to_keep) while orbax listed it: FileNotFoundError,
    # or NotADirectoryError where the deletion fell between its exists() and is_dir().
    except (FileNotFoundError, NotADirectoryError):
      if attempt == attempts - 1:
        raise


def _read_from(workdir, step, read):
  """read(manager, step) of `step`, or of the latest good checkpoint when step is None."""
  manager = _reader(workdir)
  try:
    if step is not None:
      return read(manager, step)
    found, result = _latest_good(manager, lambda s: read(manager, s), set_aside=False)
    if found is None:
      raise FileNotFoundError(f'No checkpoint in {manager.directory}: train first with '
                              f'`python -m alexnet_jax.main --workdir={workdir}`.')
    return result
  finally:
    manager.close()


def restore_params(workdir, params, config=None, step=None):
  """Restores only the parameters saved in `workdir` (latest good step unless `step`).

  `params`: a tree (arrays or jax.ShapeDtypeStruct with shardings) giving the structure
  and target placement, e.g. a freshly initialised model's on any mesh. With `config`, the
  saved network is checked to be compatible first. Returns the parameters. Safe while a
  run writes to `workdir`: only complete checkpoints are read.
  """
  abstract = {'params': _abstract(params)}

  def read(manager, s):
    stored = _stored_layout(manager, s, subtree='params')
    if config is not None:
      check_compatible(_stored_model(manager, s, stored), config, manager.directory)
    _check_layout(manager, s, abstract['params'], stored)
    return _read(manager, s, 'state', state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True))['state']['params']

  return _read_from(workdir, step, read)


def saved_config(workdir, step=None):
  """The ConfigDict a checkpoint was written with (the latest good one unless `step`)."""
  read = lambda manager, s: _read(manager, s, 'config', config=ocp.args.JsonRestore())[
      'config']
  return ml_collections.ConfigDict(_read_from(workdir, step, read))
