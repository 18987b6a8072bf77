"""Training: the train state, the model-parallel steps under shard_map, and the loop.

The mesh has axes ('data', 'model'). With model=2 each device holds one column of every
layer, as the paper's two GPUs did (Section 3.2). The layout is declared once, by
parameter name (`PARAM_LAYOUT`); the optimizer state's follows the parameters'. The batch
is split over 'data' and replicated over 'model'. `setup` assembles model, state and steps
from a config for training, the benchmarks and the tests alike.
"""

import functools
import itertools
import json
import os
import re
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import logging
from flax.training import train_state
import jax
from jax import lax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import summary_v2 as tensorboard_scalar
from tensorboard.summary.writer import event_file_writer

from alexnet_jax import checkpointing
from alexnet_jax import checks
from alexnet_jax import console
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optimizer
from alexnet_jax import pixels
from alexnet_jax import synthetic

AXES = ('data', 'model')
METRICS_FILE = 'metrics.jsonl'
# What a collective says when the process at the other end is gone (XLA:CPU's Gloo, gRPC).
_PEER_GONE = re.compile(r'Gloo \S+ failed|Connection reset by peer|Connection refused|'
                        r'Broken pipe|Socket closed')


class PeerLost(RuntimeError):
  """Another process of a multi-process run is gone; this one must stop too.

  skip_cleanup: JAX's distributed shutdown at exit would wait for the dead peer at its
  shutdown barrier until the coordinator's heartbeat timeout, then abort the process
  (console.run exits at once instead).
  """
  skip_cleanup = True


def _peer_lost(error, step, manager):
  """PeerLost for `error`, a collective of a multi-process run failing at `step` because
  a peer is gone; None for any other error."""
  if jax.process_count() < 2 or not _PEER_GONE.search(str(error)):
    return None
  me, n = jax.process_index(), jax.process_count()
  peer = f'process {1 - me}' if n == 2 else 'another process (its own log says which)'
  latest = checkpointing.latest_complete(manager)
  kept = (f'The last checkpoint, step {latest} in {manager.directory}, is intact'
          if latest is not None else f'No checkpoint was saved yet in {manager.directory}')
  return PeerLost(
      f'A peer process is gone: {peer} of {n} stopped answering at step {step} '
      f'({checkpointing.first_line(error)}); process {me} stops too. {kept}: start every '
      'process again with the same --workdir to resume.')


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state, and the plateau schedule's state."""
  plateau_state: Any = None


def mesh_shape(mesh_config, columns, num_devices):
  """(data, model, why): the mesh config.mesh asks for over `num_devices` devices.

  mesh_config.model: 2 for the paper's column-per-device split, 1 for none, 0 to choose:
  2 wherever the device count is even and the network has two columns, else 1.
  mesh_config.data: the data-parallel size, -1 for all remaining devices.
  """
  n, model = num_devices, mesh_config.model
  why = f'config.mesh.model={model}'
  if model == 0:
    if columns == 1:
      model, why = 1, 'the one-column network has no columns to split'
    elif n % 2 == 0:
      model, why = 2, 'a column per device, as the paper split its net over two GPUs'
    else:
      model, why = 1, (f'{n} device(s), not a multiple of 2: both columns on every device '
                       '(the paper\'s split needs an even device count)')
  if n % model:
    raise ValueError(f'config.mesh.model={model} does not divide the {n} device(s); use '
                     '--config.mesh.model=0 to choose by device count (or 1).')
  data = n // model if mesh_config.data == -1 else mesh_config.data
  if data < 1 or data * model != n:
    raise ValueError(f'config.mesh.data={mesh_config.data} x model={model} must equal the '
                     f'number of devices ({n}); use --config.mesh.data=-1 to fill.')
  return data, model, why


def create_mesh(mesh_config, devices=None, columns=2):
  """A ('data', 'model') mesh over all devices (of every process); see `mesh_shape`."""
  devices = jax.devices() if devices is None else devices
  data, model, why = mesh_shape(mesh_config, columns, len(devices))
  logging.info('Mesh data=%d x model=%d over %d %s device(s): %s.', data, model,
               len(devices), devices[0].platform, why)
  return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


# The parameters' layout, as rules over their 'layer/name' paths (big_vision's way): the
# first pattern that matches names the mesh axis of the parameter's last dimension. Every
# layer's output channels, kernels and biases alike, are split over 'model': a column per
# device (Section 3.2; fc8's 1000 outputs too, as each GPU computed half of them).
PARAM_LAYOUT = (
    (r'(conv[1-5]|fc[6-8])/(kernel|bias)', 'model'),
)


def param_specs(params):
  """PartitionSpecs for `params` from PARAM_LAYOUT; a parameter no rule names is an error."""
  def spec(path, leaf):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    for pattern, axis in PARAM_LAYOUT:
      if re.fullmatch(pattern, name):
        return P(*(None,) * (np.ndim(leaf) - 1), axis)
    raise ValueError(f'No rule in train.PARAM_LAYOUT places parameter {name} (shape '
                     f'{np.shape(leaf)}) on the mesh; add one for it.')
  return jax.tree_util.tree_map_with_path(spec, params)


def state_specs(state):
  """The train state's layout: the parameters' (param_specs); the optimizer state's parts
  shaped like the parameters (the momentum) alike (optax.tree_map_params); the rest
  (step, counts, hyperparameters, the plateau schedule) replicated."""
  params = param_specs(state.params)
  replicated = lambda _: P()
  opt_state = optax.tree_map_params(state.tx, lambda _, spec: spec, state.opt_state, params,
                                    transform_non_params=replicated,
                                    is_leaf=lambda x: isinstance(x, P))
  return state.replace(step=P(), params=params, opt_state=opt_state,
                       plateau_state=jax.tree.map(replicated, state.plateau_state))


def _shardings(mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def manual_axes(mesh):
  """The mesh axes the steps are written per device over: those of size > 1.

  An axis of size 1 is left out, so no collective runs over it: XLA:CPU executes such a
  no-op collective as a copy (for the gradients' all-reduce, 244 MB a step).
  """
  return tuple(a for a in AXES if mesh.shape[a] > 1)


def _local(model, axes):
  """The model as written per device: the shard_map axes it runs under, if any."""
  return model.clone(model_axis='model' if 'model' in axes else None,
                     data_axis='data' if 'data' in axes else None)


def _per_device(fn, mesh, axes, in_specs, out_specs):
  """`fn` under shard_map over `axes` (the others, of size 1, stay automatic), or as is."""
  if not axes:
    return fn
  is_spec = lambda x: isinstance(x, P)
  keep = lambda spec: P(*(a if a in axes else None for a in spec))
  in_specs, out_specs = (jax.tree.map(keep, s, is_leaf=is_spec) for s in (in_specs, out_specs))
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       axis_names=set(axes))


def create_train_state(config, model, tx, mesh, params=None, abstract=False):
  """Initialises parameters from config.seed straight into their shards on `mesh`.

  `params` (e.g. converted published weights, in the model's layout) are used instead of
  an initialisation; the optimizer state starts fresh either way. abstract: the state's
  jax.ShapeDtypeStructs with their shardings instead, nothing computed or allocated (to
  lower or compile the steps ahead of time).
  """
  plateau = optimizer.create_plateau(config)
  size = config.data.image_size

  def init(params):
    if params is None:
      params = model.init({'params': jax.random.key(config.seed)},
                          jnp.zeros((1, size, size, 3), jnp.float32), train=False)['params']
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             plateau_state=plateau.init(params))

  shapes = jax.eval_shape(init, params)
  shardings = _shardings(mesh, state_specs(shapes))
  if abstract:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, shardings)
  return jax.jit(init, out_shardings=shardings)(params)


def initial_state(config, mesh, steps_per_epoch=1, params=None, abstract=False):
  """(model, state): the network of config.model and its train state on `mesh`, from
  config.seed or `params` (abstract: shapes and shardings only, create_train_state).
  steps_per_epoch sets the learning-rate schedule, which is not part of the state's
  layout: any value gives a state a checkpoint restores into."""
  model = models.AlexNet(**config.model)
  tx = optimizer.create_optimizer(
      config, optimizer.create_learning_rate_fn(config, steps_per_epoch))
  return model, create_train_state(config, model, tx, mesh, params, abstract)


class Setup(NamedTuple):
  model: models.AlexNet
  state: TrainState
  train_step: Callable  # (state, global batch) -> (state, metrics)
  eval_step: Callable  # (params, global batch) -> summed counts


def setup(config, mesh, steps_per_epoch=1, mean=None, params=None, abstract=False):
  """The model, its initial state and the jitted steps for `config` on `mesh`: the one
  assembly that training, the benchmarks and the tests share. mean: what the steps
  subtract (input_pipeline.mean's by default). abstract: the state as shapes and
  shardings only (create_train_state), for `step.trace(...).lower(...)` without a
  device's memory."""
  model, state = initial_state(config, mesh, steps_per_epoch, params, abstract)
  if mean is None:
    mean = input_pipeline.mean(config.data, config.data.image_size)
  mean = jnp.asarray(mean)
  return Setup(model, state, make_train_step(config, model, mesh, state, mean),
               make_eval_step(model, mesh, state.params, mean, config.data.std,
                              config.data.channel_order, config.precision))


def with_precision(fn, precision):
  """`fn` traced under jax.default_matmul_precision(precision) ('highest' | 'default'):
  every convolution and matrix product in it, forward and backward, carries that
  precision into the lowered program (config.precision; README "Switches")."""
  @functools.wraps(fn)
  def traced(*args):
    with jax.default_matmul_precision(precision):
      return fn(*args)
  return traced


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(config, model, mesh, state, mean):
  """The jitted training step: (state, batch) -> (state, metrics).

  batch: {'image': uint8 [global_batch, s, s, 3], 'lighting': float32 [global_batch, 3]
  (PCA lighting offsets), 'label': int32 [global_batch]}, split over 'data'. Images are
  normalised on the device. A step whose loss or gradients are not finite leaves the
  parameters unchanged and reports nonfinite=1; the loop stops or counts it.
  """
  axes = manual_axes(mesh)
  local_model = _local(model, axes)
  dropout_key = jax.random.key(config.seed + 1)

  def step(state, batch):
    images = pixels.normalize(batch['image'], batch['lighting'], mean,
                              std=config.data.std,
                              channel_order=config.data.channel_order)
    rng = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params):
      logits = local_model.apply({'params': params}, images, train=True,
                                 rngs={'dropout': rng})
      # The mean over the global batch: with it, autodiff's transposes of the
      # collectives sum each device's share once (the logits are replicated over
      # 'model', the parameters over 'data').
      loss = lax.pmean(cross_entropy(logits, batch['label']).mean(), axes)
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    finite = lax.pmin(finite.astype(jnp.int32), axes).astype(bool)

    def skip(state):
      # Skip a non-finite update, but let the counters (integer leaves: the step, the
      # schedule's count) advance, so the data and the schedule stay aligned with the step.
      return jax.tree.map(lambda new, old: new if jnp.issubdtype(new.dtype, jnp.integer)
                          else old, state.apply_gradients(grads=grads), state)

    # A branch, not a select of new and old: the update then runs in place on the donated
    # state (a select keeps both alive, copying fc6's kernel and momentum every step).
    new_state = lax.cond(finite, lambda s: s.apply_gradients(grads=grads), skip, state)
    top1 = jnp.argmax(logits, -1) == batch['label']
    metrics = {
        'loss': loss,
        'train_top1_error': 1.0 - lax.pmean(top1.mean(), axes),
        'learning_rate': optimizer.current_learning_rate(new_state.opt_state),
        'nonfinite': 1 - finite.astype(jnp.int32),
    }
    return new_state, metrics

  specs = state_specs(state)
  batch_specs = {'image': P('data'), 'lighting': P('data'), 'label': P('data')}
  per_device = _per_device(with_precision(step, config.precision), mesh, axes,
                           (specs, batch_specs), (specs, P()))
  return jax.jit(per_device, donate_argnums=0,
                 out_shardings=(_shardings(mesh, specs), NamedSharding(mesh, P())))


def make_eval_step(model, mesh, params, mean, std=1.0, channel_order='rgb',
                   precision='highest'):
  """The jitted evaluation step: (params, batch) -> summed counts over the batch.

  batch: {'image': uint8 [b, s, s, 3] or [b, views, s, s, 3], 'label': int32 [b],
  'mask': bool [b]}, normalised as pixels.normalize (mean, std, channel_order).
  precision: of its convolutions and matrix products (with_precision).
  With views, the softmax outputs are averaged (Section 4.1).
  Returns {'top1_correct', 'top5_correct', 'loss', 'count'} summed over unmasked examples,
  with views also 'centre_top1_correct' and 'centre_top5_correct' (the centre view's
  own); top-5 is top-min(5, classes).
  """
  axes = manual_axes(mesh)
  local_model = _local(model, axes)

  def step(params, batch):
    probs = inference.view_probabilities(local_model, params, batch['image'], mean, std,
                                         channel_order)
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    sums = {'count': mask}
    if probs.ndim == 3:  # The centre view alone, from the same forward pass.
      centre = inference.scores(probs[:, pixels.VIEWS.index('center')], labels)
      sums.update(centre_top1_correct=centre['top1_correct'] * mask,
                  centre_top5_correct=centre['top5_correct'] * mask)
      probs = probs.mean(axis=1)
    sums.update({k: v * mask for k, v in inference.scores(probs, labels).items()})
    # Summed over the batch's shards; the same on both columns (the logits are gathered).
    over_data, over_model = (tuple(a for a in axes if a == name) for name in AXES)
    return jax.tree.map(lambda x: lax.pmean(lax.psum(x.sum(), over_data), over_model), sums)

  batch_specs = {'image': P('data'), 'label': P('data'), 'mask': P('data')}
  per_device = _per_device(with_precision(step, precision), mesh, axes,
                           (param_specs(params), batch_specs), P())
  return jax.jit(per_device, out_shardings=NamedSharding(mesh, P()))


def data_shard(mesh):
  """(index, count): this process feeds rows [index*b, (index+1)*b) of each global batch
  of count*b examples, b = global batch / count.

  The process's devices must hold a contiguous block of the 'data' axis; with model=2
  across two processes both feed the same rows (count 1).
  """
  rows = sorted({i for (i, _), d in np.ndenumerate(mesh.devices)
                 if d.process_index == jax.process_index()})
  size = len(rows)
  if rows != list(range(rows[0], rows[0] + size)) or rows[0] % size:
    raise ValueError(f'Process {jax.process_index()} holds data rows {rows} of the mesh, '
                     'not one aligned block; order the devices by process.')
  return rows[0] // size, mesh.shape['data'] // size


def global_batch(mesh, local_batch):
  """Numpy arrays of this process's examples -> global arrays split over 'data'; arrays
  already global (synthetic data's) pass as they are."""
  sharding = NamedSharding(mesh, P('data'))
  count = data_shard(mesh)[1]
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else jax.make_array_from_process_local_data(
          sharding, x, (x.shape[0] * count,) + x.shape[1:]), local_batch)


def create_split(config, mesh, split, **kwargs):
  """This process's batches of `split`: input_pipeline.create_split's (NumPy, this
  process's rows), or for data.dataset='synthetic' global arrays made on the device."""
  if config.data.dataset == synthetic.DATASET:
    return synthetic.create_split(config, mesh, split, **kwargs)
  return input_pipeline.create_split(config.data, split, shard=data_shard(mesh), **kwargs)


def evaluate(eval_step, params, config, mesh, num_views, stop=lambda: False):
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
    sums = eval_step(params, global_batch(mesh, batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if stop():
      return None
  totals = jax.device_get(totals)
  count = float(totals['count'])
  errors = {k.replace('correct', 'error'): 1.0 - v / count for k, v in totals.items()
            if k.endswith('_correct')}
  return dict(errors, loss=totals['loss'] / count, count=count)


def read_history(path):
  """The records of a metrics.jsonl ([(line, dict)]) and its cut-off last line (bytes, or
  None): a last line without its newline that does not parse, as a kill or a full disk
  during a write leaves it.

  Any other line that is not UTF-8, not JSON or not an object with an integer 'step' is
  a ValueError naming the file and the line: the resume rewrites the file and would lose it.
  """
  if not os.path.exists(path):
    return [], None
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  last = lines.pop()  # b'' after a final newline.
  records = []

  def parse(raw):
    """(line, record) of one line; ValueError saying what is wrong with it."""
    try:
      text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise ValueError(f'is not UTF-8 text ({e})') from None
    try:
      record = json.loads(text)
    except ValueError as e:
      raise ValueError(f'is not JSON ({e}: {text[:80]!r})') from None
    if not isinstance(record, dict) or not isinstance(record.get('step'), int):
      raise ValueError(f'is not a JSON object with an integer "step" ({text[:80]!r})')
    return text + '\n', record

  for number, raw in enumerate(lines, 1):
    try:
      records.append(parse(raw))
    except ValueError as e:
      raise ValueError(
          f'{path}, line {number} {e}. The file is this run\'s metrics history (one JSON '
          'object a line), which a resume rewrites: fix or delete that line, or move the '
          'file aside to start a new history, then rerun.') from None
  cut = None
  if last:
    try:
      records.append(parse(last))
    except ValueError:
      cut = last
  return records, cut


def resume_history(path, step, evaluation_due):
  """Makes metrics.jsonl the history up to `step`, where a run resumes; says what it drops.

  Lines past `step` are dropped (the run redoes those steps; an INFO line says so); a
  cut-off last line too, with a WARNING naming its step. Returns whether the evaluation
  of `step` must be redone: `evaluation_due` (the checkpoint says it was done) but no
  line records it, e.g. the line that was cut off.
  """
  records, cut = read_history(path)
  keep = [line for line, record in records if record['step'] <= step]
  later = sorted({record['step'] for _, record in records if record['step'] > step})
  redo = evaluation_due and not any(
      r['step'] == step and 'eval_top1_error' in r for _, r in records)
  if cut is not None:
    found = re.match(rb'\{"step": (\d+)', cut)
    cut_step = int(found.group(1)) if found else None
    if cut_step is not None and cut_step > step:
      fate = f'step {cut_step} is past the checkpoint (step {step}) and is redone'
    elif redo:
      fate = f'the evaluation of step {step} is redone'
    else:
      fate = (f'what it held of step {cut_step} is lost' if cut_step is not None
              else 'what it held is lost')
    logging.warning('%s: dropped its last line, cut off (%d bytes: %r); %s.', path,
                    len(cut), cut[:60], fate)
  elif redo:
    logging.warning('%s has no evaluation of step %d, which the checkpoint records as '
                    'done; redoing it.', path, step)
  if later:
    logging.info('%s: dropped the lines of steps %d-%d, past the checkpoint (step %d); '
                 'they are redone.', path, later[0], later[-1], step)
  if os.path.exists(path):
    with open(path, 'rb') as f:
      unchanged = f.read() == ''.join(keep).encode()
    if not unchanged:  # Also a last line without its newline, which the writer would extend.
      with open(path + '.tmp', 'w') as f:
        f.writelines(keep)
      os.replace(path + '.tmp', path)
  return redo


class MetricsWriter:
  """Writes scalars to `metrics.jsonl` (one JSON object a line) and TensorBoard (the
  tensorboard package's event-file writer, which needs no TensorFlow).

  A resumed run first makes the file its history up to the resumed step
  (`resume_history`). Not clu.metric_writers (flax examples' choice): clu has no
  JSON-lines writer, and metrics.jsonl is what the experiments, the tests and a user's own
  scripts read without TensorFlow; its MultiWriter of TensorBoard and logging would replace
  the ten lines below with a dependency, and the resume's truncation would stay ours.
  """

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a')
      self._tb = event_file_writer.EventFileWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=tensorboard_scalar.scalar_pb(k, v)))
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Preemption:
  """Says when to stop for a SIGTERM, at a point every process agrees on.

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) catches SIGTERM on any process, and
  `multihost_utils.reached_preemption_sync_point` turns True on every process at the same
  call. So `reached()` must be called at the same points by every process: after every
  training step and every evaluation batch.
  """

  def __init__(self):
    self._calls = 0
    self._flag = False
    self._multi = jax.process_count() > 1
    self._previous = None if self._multi else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self):
    self._calls += 1
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self._flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def compile_steps(train_step, eval_step, state, config, mesh, local_batch, num_views):
  """Compiles the steps ahead of time, for the shapes the run will feed them.

  So a multi-process run enters its first collective with every process compiled (a
  process that compiles much later would hit the CPU collectives' 30 s timeout), and a
  compile error shows before the first step.
  """
  def abstract(x, rows):
    return jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype,
                                sharding=NamedSharding(mesh, P('data')))

  count = data_shard(mesh)[1]
  train_batch = jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else abstract(x, x.shape[0] * count),
      local_batch)  # A global array (synthetic data) is its own abstraction.
  size, b = config.data.image_size, config.eval_batch_size
  compiled_eval = {}
  for views in sorted({1, num_views}):
    shape = (b, views, size, size, 3) if views > 1 else (b, size, size, 3)
    eval_batch = {'image': jax.ShapeDtypeStruct(shape, jnp.uint8),
                  'label': jax.ShapeDtypeStruct((b,), jnp.int32),
                  'mask': jax.ShapeDtypeStruct((b,), jnp.bool_)}
    eval_batch = jax.tree.map(lambda x: abstract(x, b), eval_batch)
    compiled_eval[views] = eval_step.lower(state.params, eval_batch).compile()
  compiled_train = train_step.lower(state, train_batch).compile()
  def eval_step_compiled(params, batch):
    image = batch['image']
    return compiled_eval[image.shape[1] if image.ndim == 5 else 1](params, batch)

  return compiled_train, eval_step_compiled


def _hide_accelerators_from_tensorflow():
  """tf.data reads the data on the host: where a data source has imported TensorFlow, hide
  the GPUs from it, so that it takes none of their memory from JAX."""
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    tf.config.set_visible_devices([], 'GPU')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates AlexNet; resumes from the latest checkpoint in `workdir`.

  Everything that can be checked is checked before any compute: the config
  (checks.validate), the dataset (checks.check_data), the workdir (writable, not in use by
  another run, space for a checkpoint).
  """
  checks.validate(config)  # Imports the data's format, and TensorFlow with it (not synthetic's).
  _hide_accelerators_from_tensorflow()
  mesh = create_mesh(config.mesh, columns=config.model.columns)
  checks.validate_mesh(config, mesh)
  num_train = checks.check_data(config)
  checkpointing.check_writable(workdir)
  release = checkpointing.lock_workdir(workdir)
  read_history(os.path.join(workdir, METRICS_FILE))  # A damaged line: an error now.
  preemption = Preemption()  # From here on a SIGTERM ends the run cleanly.
  try:
    return _train(config, workdir, mesh, num_train, preemption)
  finally:
    preemption.close()
    release()


def _train(config, workdir, mesh, num_train, preemption):
  """The loop of train_and_evaluate, once the checks have passed and the lock is held."""
  steps_per_epoch, total_steps = optimizer.run_length(config, num_train)
  plateau = optimizer.create_plateau(config)
  _, state, train_step, eval_step = setup(config, mesh, steps_per_epoch)
  checkpointing.check_space(workdir, state)
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  state, evaluated = checkpointing.restore_latest(manager, state, config)
  start_step = int(state.step)
  is_main = jax.process_index() == 0
  # An evaluation the checkpoint records as done but metrics.jsonl lost is redone.
  due = evaluated and start_step > 0 and (start_step % config.eval_every_steps == 0
                                          or start_step == total_steps)
  redo = is_main and resume_history(os.path.join(workdir, METRICS_FILE), start_step, due)
  if jax.process_count() > 1:
    redo = bool(multihost_utils.broadcast_one_to_all(np.int32(redo)))
  if start_step >= total_steps and evaluated and not redo:
    logging.info('The run in %s is complete (step %d of %d).', workdir, start_step,
                 total_steps)
    checkpointing.finish(manager)
    return state
  writer = MetricsWriter(workdir, enabled=is_main)
  logging.info('Training %d steps (%d per epoch) from step %d on a %s mesh.',
               total_steps, steps_per_epoch, start_step, dict(mesh.shape))

  batches = create_split(
      config, mesh, config.data.train_split, global_batch_size=config.batch_size,
      train=True, seed=config.seed, start_step=start_step,
      image_size=config.data.image_size)
  first = next(batches)
  train_step, eval_step = compile_steps(train_step, eval_step, state, config, mesh, first,
                                       config.data.eval_views)
  ocp.multihost.sync_global_processes('alexnet_jax: compiled', timeout=1800)
  progress = console.Progress(total_steps, 'train', start=start_step, every=None,
                              enabled=is_main)
  pending = None  # The previous step's metrics: read one step late, keeping the device busy.
  profile = profile_window(config.profile_steps, start_step, total_steps)
  tracing = False
  skipped = 0
  t0, n0 = time.perf_counter(), start_step

  def check(step, metrics):
    nonlocal skipped
    metrics = jax.device_get(metrics)
    if metrics['nonfinite']:
      if config.on_nan == 'stop':
        checkpointing.wait(manager)
        raise FloatingPointError(
            f'Non-finite loss or gradients at step {step} (loss={metrics["loss"]}); the '
            f'update was not applied and training stopped. Checkpoints in {workdir} are '
            f'kept ({_latest(manager)}). Lower the learning rate, or set '
            "config.on_nan='skip' to skip such steps.")
      skipped += 1
    return metrics

  def run_eval(step, update_schedule=True):
    """The evaluation due at `step`; False if a preemption interrupted it.

    update_schedule=False: a redone evaluation whose result the restored plateau state
    already holds.
    """
    nonlocal state
    last = step == total_steps
    views = config.data.eval_views if last else 1
    result = evaluate(eval_step, state.params, config, mesh, views, preemption.reached)
    if result is None:
      return False
    writer.write(step, dict({f'eval_{k}': v for k, v in result.items() if k.endswith('_error')},
                            eval_loss=result['loss'], eval_views=views))
    logging.info('step %d: eval (%d view(s), %d examples) top-1 error %.4f, top-%d error '
                 '%.4f', step, views, result['count'], result['top1_error'],
                 min(5, config.model.num_classes), result['top5_error'])
    if config.schedule == 'plateau' and not last and update_schedule:
      state = set_plateau(state, plateau, result['top1_error'], mesh)
    return True

  def stop(step, evaluated):
    checkpointing.save(manager, step, state, config, evaluated=evaluated)
    logging.warning('SIGTERM: saved a checkpoint at step %d%s; exiting. Rerun with the same '
                    '--workdir to resume.', step,
                    '' if evaluated else ' (its evaluation is redone on resume)')

  step = start_step
  peer_lost = None
  try:
    if (not evaluated or redo) and not run_eval(start_step, update_schedule=not evaluated):
      stop(start_step, evaluated=False)
      return state
    stream = itertools.chain([first], batches)
    for step in range(start_step + 1, total_steps + 1):
      if step == profile[0]:
        jax.profiler.start_trace(os.path.join(workdir, 'profile'))
        tracing = True
      state, metrics = train_step(state, global_batch(mesh, next(stream)))
      if step == profile[1]:
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
        tracing = False
        logging.info('Wrote a profile of steps %d-%d to %s.', *profile,
                     os.path.join(workdir, 'profile'))
      checkpointing.check_saves(manager)  # A failed save ends the run now.
      if pending is not None:
        check(*pending)
      pending = (step, metrics)
      progress.update()

      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = check(*pending)
        pending = None
        elapsed = time.perf_counter() - t0
        rate = (step - n0) * config.batch_size / max(elapsed, 1e-9)
        t0, n0 = time.perf_counter(), step
        scalars = {k: metrics[k] for k in ('loss', 'train_top1_error', 'learning_rate')}
        scalars.update(images_per_sec=rate, skipped_steps=skipped,
                       skipped_images=len(batches.skipped))
        writer.write(step, scalars)
        progress.log(f'step {step}/{total_steps} (epoch {step / steps_per_epoch:.2f}): loss '
                     f"{scalars['loss']:.4f}, learning rate {scalars['learning_rate']:.3g}, "
                     f'{rate:.0f} images/s', loss=f"{scalars['loss']:.3f}", img_s=f'{rate:.0f}')

      eval_due = step % config.eval_every_steps == 0 or step == total_steps
      if preemption.reached() or (eval_due and not run_eval(step)):
        if pending is not None:
          check(*pending)
        stop(step, evaluated=not eval_due)
        break
      if eval_due:
        t0, n0 = time.perf_counter(), step  # Images/s of training alone.
      if step % config.checkpoint_every_steps == 0 or step == total_steps:
        if pending is not None:
          check(*pending)
          pending = None
        checkpointing.save(manager, step, state, config)
  except (jax.errors.JaxRuntimeError, ValueError) as e:
    peer_lost = _peer_lost(e, step, manager)
    if peer_lost is None:
      raise
    raise peer_lost from e
  finally:
    if tracing:  # Stopped inside the window.
      jax.profiler.stop_trace()
    if peer_lost is None:  # A save in flight would wait for the dead peer.
      checkpointing.finish(manager)
    progress.close()
    writer.close()
  return state


def profile_window(profile_steps, start_step, total_steps):
  """(first, last): the steps of config.profile_steps = (start, stop) this run traces,
  start..stop as the logs number them, from start_step + 1 on a resume; (0, -1) for none."""
  if not profile_steps:
    return 0, -1
  first, last = max(profile_steps[0], start_step + 1), min(profile_steps[1], total_steps)
  return (first, last) if first <= last else (0, -1)


def _latest(manager):
  step = manager.latest_step()
  return 'none saved yet' if step is None else f'latest: step {step}'


def set_plateau(state, plateau, eval_error, mesh):
  """Feeds one evaluation's error to the plateau schedule; sets the lr multiplier."""
  replicated = NamedSharding(mesh, P())
  plateau_state = optimizer.update_plateau(plateau, state.plateau_state, eval_error)
  plateau_state = jax.device_put(plateau_state, replicated)
  # A copy: the step donates its state, and one buffer may not be donated twice.
  opt_state = optimizer.set_lr_scale(state.opt_state, jnp.copy(plateau_state.scale))
  return state.replace(plateau_state=plateau_state, opt_state=opt_state)
