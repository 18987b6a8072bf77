"""The train state and the steps: one jit-compiled training step and one evaluation step,
each written per device under shard_map on the ('data', 'model') mesh (partitioning).

`setup` assembles model, state and steps from a config for training, the benchmarks and
the tests alike.
"""

import functools
from typing import Any, Callable, NamedTuple

from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optimizer
from alexnet_jax import partitioning
from alexnet_jax import pixels


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state, and the plateau schedule's state."""
  plateau_state: Any = None


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
  shardings = partitioning.shardings(mesh, partitioning.state_specs(shapes))
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
  axes = partitioning.manual_axes(mesh)
  local_model = partitioning.local_model(model, axes)
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

  specs = partitioning.state_specs(state)
  batch_specs = {'image': P('data'), 'lighting': P('data'), 'label': P('data')}
  per_device = partitioning.per_device(with_precision(step, config.precision), mesh, axes,
                                       (specs, batch_specs), (specs, P()))
  return jax.jit(per_device, donate_argnums=0, out_shardings=(
      partitioning.shardings(mesh, specs), NamedSharding(mesh, P())))


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
  axes = partitioning.manual_axes(mesh)
  local_model = partitioning.local_model(model, axes)

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
    over_data, over_model = (tuple(a for a in axes if a == name)
                             for name in partitioning.AXES)
    return jax.tree.map(lambda x: lax.pmean(lax.psum(x.sum(), over_data), over_model), sums)

  batch_specs = {'image': P('data'), 'label': P('data'), 'mask': P('data')}
  per_device = partitioning.per_device(with_precision(step, precision), mesh, axes,
                                       (partitioning.param_specs(params), batch_specs), P())
  return jax.jit(per_device, out_shardings=NamedSharding(mesh, P()))


def compile_steps(train_step, eval_step, state, config, mesh, local_batch, num_views):
  """Compiles the steps ahead of time, for the shapes the run will feed them.

  So a multi-process run enters its first collective with every process compiled (a
  process that compiles much later would hit the CPU collectives' 30 s timeout), and a
  compile error shows before the first step.
  """
  train_batch = partitioning.global_batch(mesh, local_batch, abstract=True)
  size, b = config.data.image_size, config.eval_batch_size
  sharding = NamedSharding(mesh, P('data'))
  compiled_eval = {}
  for views in sorted({1, num_views}):  # eval_batch_size is global.
    shape = (b, views, size, size, 3) if views > 1 else (b, size, size, 3)
    eval_batch = {'image': jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=sharding),
                  'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding),
                  'mask': jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=sharding)}
    compiled_eval[views] = eval_step.lower(state.params, eval_batch).compile()
  compiled_train = train_step.lower(state, train_batch).compile()

  def eval_step_compiled(params, batch):
    image = batch['image']
    return compiled_eval[image.shape[1] if image.ndim == 5 else 1](params, batch)

  return compiled_train, eval_step_compiled


def set_plateau(state, config, eval_error, mesh):
  """Feeds one evaluation's error to the plateau schedule; sets the lr multiplier."""
  replicated = NamedSharding(mesh, P())
  plateau_state = optimizer.update_plateau(optimizer.create_plateau(config),
                                           state.plateau_state, eval_error)
  plateau_state = jax.device_put(plateau_state, replicated)
  # A copy: the step donates its state, and one buffer may not be donated twice.
  opt_state = optimizer.set_lr_scale(state.opt_state, jnp.copy(plateau_state.scale))
  return state.replace(plateau_state=plateau_state, opt_state=opt_state)
