"""The optimizer: SGD with momentum and weight decay in the paper's form, and its schedules.

Section 5 of the paper: batch 128, momentum 0.9, weight decay 5e-4, learning rate 0.01,
divided by 10 when the validation error stops improving (three times in all). The original
code (layer-params-145.cfg) applies weight decay to weights only and gives biases twice the
learning rate (config.bias_lr_multiplier = 2.0 in the 'original_code' preset).

The learning rate is the product of two hyperparameters kept in the optimizer state:
`learning_rate`, a function of the step (the schedule), and `lr_scale`, a multiplier the
training loop writes between steps from the plateau schedule's state (`set_lr_scale`),
so the train step stays a pure function of (state, batch).
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
    'plateau'  constant config.learning_rate; the drops come from `create_plateau`,
               driven by the validation error, through the optimizer's `lr_scale`.
    'epochs'   divided by 10 at the start of each epoch in config.lr_drop_epochs (the
               original code: 0.01 for epochs 0-24, 1e-3 from 25, 1e-4 from 51, 1e-5
               from 79; it stops at 91).
    'step'     divided by 10 every config.lr_step_epochs epochs (torchvision: 30).
    'cosine'   linear warm-up from 0 over config.warmup_epochs, then cosine decay to 0 at
               `total_steps`. For large batches the peak is linearly scaled (Goyal et al.
               2017): config.learning_rate * config.batch_size / 128, 128 being the
               paper's batch. Only this schedule scales the learning rate.
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
  * lr_scale for kernels and that times config.bias_lr_multiplier for biases. The chain is
  add_decayed_weights -> scale_by_learning_rate -> (biases) scale -> trace, followed by
  optax.apply_updates. Because the gradient is scaled by -eps BEFORE the momentum trace,
  the chain is exactly the paper's update v <- m v - eps (wd W + g), W <- W + v, also at a
  step where eps changes: past steps stay in the velocity at the eps they were taken with.
  optax.sgd(eps, momentum) traces first and scales after (v <- m v + g; W <- W - eps v);
  it equals the paper's form while eps is constant, but at the step where eps changes it
  rescales the whole accumulated velocity by the new eps (a drop by 10 shrinks the step
  tenfold at once instead of letting the old velocity decay). tests/test_optimizer.py
  pins both facts against a NumPy version of the paper's update.

  The state is optax.inject_hyperparams's: `hyperparams['learning_rate']` is the base rate
  the last update used (before any update: the first one's), `hyperparams['lr_scale']`
  (default 1.0) the plateau multiplier; the momentum (key 'trace') has the parameters'
  shapes, every other leaf is a scalar.
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
  """The weights' learning rate (schedule x lr_scale) of the update that made opt_state.

  Pass the state after the update to log the rate that update used.
  """
  return opt_state.hyperparams['learning_rate'] * opt_state.hyperparams['lr_scale']


def create_plateau(config):
  """The paper's "divide by 10 when the validation error stops improving", at most
  config.plateau_max_drops times (the paper: three).

  optax.contrib.reduce_on_plateau fed one evaluation's top-1 error at a time: after
  config.plateau_patience evaluations in a row without improvement (relative tolerance
  1e-4) the scale is multiplied by 0.1; min_scale = 0.1 ** plateau_max_drops stops it
  after that many drops. The state (a NamedTuple of scalars) goes into checkpoints.
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
