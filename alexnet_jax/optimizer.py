"""SGD with momentum and weight decay in the paper's form (Section 5), and its schedules.

The learning rate is schedule(step) * lr_scale, both hyperparameters in the optimizer
state; the loop writes lr_scale from the plateau state between steps (`set_lr_scale`), so
the train step stays a pure function of (state, batch).
"""

import functools

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('plateau', 'epochs', 'step', 'cosine')
# The paper's batch: the 'cosine' schedule scales the learning rate by batch_size / 128.
REFERENCE_BATCH_SIZE = 128


def total_steps(config, steps_per_epoch):
  """config.num_train_steps if > 0, else config.num_epochs * steps_per_epoch."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)


def run_length(config, num_train):
  """(steps_per_epoch, total_steps) of a run over `num_train` training examples: whole
  batches of config.batch_size per epoch (the remainder is left out of that epoch)."""
  steps_per_epoch = num_train // config.batch_size
  return steps_per_epoch, total_steps(config, steps_per_epoch)


def create_learning_rate_fn(config, steps_per_epoch):
  """The base learning rate as a function of the step (0-based count of updates done).

  config.schedule:
    'plateau'  constant; the drops come from `create_plateau` through `lr_scale`.
    'epochs'   divided by 10 at each epoch of config.lr_drop_epochs (the original code's).
    'step'     divided by 10 every config.lr_step_epochs epochs (torchvision's).
    'cosine'   linear warm-up over config.warmup_epochs, then cosine decay to 0 at
               `total_steps`; the only one whose peak scales with the batch (Goyal et al.
               2017): config.learning_rate * config.batch_size / 128.
  """
  lr = config.learning_rate
  if config.schedule == 'plateau':
    return optax.constant_schedule(lr)
  if config.schedule == 'epochs':
    return optax.piecewise_constant_schedule(
        lr, {int(e * steps_per_epoch): 0.1 for e in config.lr_drop_epochs})
  if config.schedule == 'step':
    return optax.exponential_decay(lr, transition_steps=config.lr_step_epochs * steps_per_epoch,
                                   decay_rate=0.1, staircase=True)
  if config.schedule == 'cosine':
    steps = total_steps(config, steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)  # Fewer than `steps`: checks.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr * config.batch_size / REFERENCE_BATCH_SIZE,
        warmup_steps=warmup, decay_steps=steps, end_value=0.0)
  raise ValueError(f'config.schedule={config.schedule!r} must be one of {SCHEDULES}.')


def weight_decay_mask(params):
  """True on 'kernel' leaves (decayed), False on 'bias' leaves (not decayed)."""

  def is_kernel(path, _):
    name = getattr(path[-1], 'key', None)
    if name not in ('kernel', 'bias'):
      raise ValueError(f'Parameter {jax.tree_util.keystr(path)} is neither a kernel nor a '
                       'bias; weight_decay_mask does not know whether to decay it.')
    return name == 'kernel'

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def _bias_mask(params):
  return jax.tree.map(lambda decayed: not decayed, weight_decay_mask(params))


def create_optimizer(config, learning_rate_fn):
  """SGD with momentum in the paper's form: v <- m v - eps (wd W + g); W <- W + v.

  m = config.momentum, wd = config.weight_decay (kernels only), eps = learning_rate_fn(step)
  * lr_scale, times config.bias_lr_multiplier for biases. The gradient is scaled by -eps
  before the momentum trace, so when eps drops the velocity keeps the steps already taken
  at their old eps; optax.sgd traces first and would rescale all of it at once
  (tests/test_optimizer.py pins both against NumPy).

  State: optax.inject_hyperparams's, with hyperparams 'learning_rate' (the base rate the
  last update used) and 'lr_scale' (1.0 until the plateau drops); the momentum ('trace')
  has the parameters' shapes, every other leaf is a scalar.
  """

  def sgd_paper_form(learning_rate, lr_scale):
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate * lr_scale),  # -eps (wd W + g)
        optax.masked(optax.scale(config.bias_lr_multiplier), _bias_mask),
        optax.trace(decay=config.momentum),  # v <- m v - eps (wd W + g)
    )

  return optax.inject_hyperparams(sgd_paper_form)(learning_rate=learning_rate_fn,
                                                   lr_scale=1.0)


def set_lr_scale(opt_state, scale):
  """opt_state with the learning-rate multiplier set to `scale` (from the plateau state)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams['lr_scale'] = jnp.asarray(scale, hyperparams['lr_scale'].dtype)
  return opt_state._replace(hyperparams=hyperparams)


def current_learning_rate(opt_state):
  """The weights' learning rate (schedule x lr_scale) of the update that made opt_state."""
  return opt_state.hyperparams['learning_rate'] * opt_state.hyperparams['lr_scale']


def create_plateau(config):
  """The paper's "divide by 10 when the validation error stops improving", at most
  config.plateau_max_drops times (the paper: three): optax.contrib.reduce_on_plateau fed
  each evaluation's top-1 error, dropping after config.plateau_patience evaluations without
  improvement. Its state, scalars, goes into checkpoints.
  """
  factor = 0.1
  return optax.contrib.reduce_on_plateau(factor=factor, patience=config.plateau_patience,
                                         min_scale=_min_scale(factor,
                                                              config.plateau_max_drops))


def _min_scale(factor, drops):
  # factor ** drops as reduce_on_plateau computes it (repeated float32 products), so the
  # scale lands on min_scale exactly and one more plateau cannot move it by a rounding.
  scale = jnp.float32(1.0)
  for _ in range(drops):
    scale = scale * jnp.float32(factor)
  return float(scale)


@functools.partial(jax.jit, static_argnums=0)  # Compiled once per plateau transformation.
def update_plateau(plateau, plateau_state, eval_error):
  """Feeds one evaluation's top-1 error; the new lr multiplier is the result's .scale."""
  _, plateau_state = plateau.update(updates=(), state=plateau_state,
                                    value=jnp.asarray(eval_error, jnp.float32))
  return plateau_state
