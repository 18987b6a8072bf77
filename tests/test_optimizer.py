"""The optimizer against a NumPy version of the paper's update, and its schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import checks
from alexnet_jax import models
from alexnet_jax import optimizer
from configs import alexnet
from configs import sample


def tiny_params(seed=0):
  """A parameter tree laid out like the AlexNet's, with tiny leaves."""
  rng = np.random.default_rng(seed)
  shapes = {'conv1': (3, 3, 2, 4), 'conv2': (3, 3, 2, 6), 'fc6': (6, 5), 'fc8': (5, 3)}
  return {name: {'kernel': (0.1 * rng.standard_normal(shape)).astype(np.float32),
                 'bias': (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)}
          for name, shape in shapes.items()}


def random_grads(params, n, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
          for _ in range(n)]


def paper_update(params, grads, eps, momentum, weight_decay, bias_lr_multiplier):
  """The original code's update in float64 NumPy; eps[t] is the weights' rate at step t.

  Weights: v <- m v - eps wd W - eps g. Biases: v <- m v - eps_b g, eps_b = mult * eps.
  Then W <- W + v. Returns the parameters and velocities after every step.
  """
  params, grads = jax.tree.map(lambda p: np.asarray(p, np.float64), (params, grads))
  velocity = jax.tree.map(np.zeros_like, params)
  history = []
  for g, e in zip(grads, eps):
    for layer in params:
      w, b = params[layer]['kernel'], params[layer]['bias']
      v = velocity[layer]
      v['kernel'] = momentum * v['kernel'] - e * weight_decay * w - e * g[layer]['kernel']
      v['bias'] = momentum * v['bias'] - bias_lr_multiplier * e * g[layer]['bias']
      params[layer] = {'kernel': w + v['kernel'], 'bias': b + v['bias']}
    history.append(jax.tree.map(np.copy, (params, velocity)))
  return history


def run_optax(tx, params, grads, lr_scales=None):
  """Applies tx for len(grads) jitted steps; lr_scales[t] is written before step t."""

  @jax.jit
  def step(params, opt_state, g):
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  history = []
  for t, g in enumerate(grads):
    if lr_scales is not None:
      opt_state = optimizer.set_lr_scale(opt_state, lr_scales[t])
    params, opt_state = step(params, opt_state, g)
    history.append((params, opt_state))
  return history


def assert_trees_close(actual, expected, atol):
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual),
                          jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), e, rtol=0, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def make_config(**overrides):
  config = alexnet.get_config()
  config.update({'learning_rate': 0.1, 'weight_decay': 0.05, 'bias_lr_multiplier': 2.0,
                 'momentum': 0.9, **overrides})
  return config


@pytest.mark.parametrize('how', ['lr_scale', 'epochs'])
def test_chain_is_the_papers_update_when_eps_changes(how):
  """Six steps; eps drops by 10 before step 3 (and again before step 5 with 'epochs')."""
  params, n = tiny_params(), 6
  grads = random_grads(params, n)
  if how == 'lr_scale':
    config = make_config(schedule='plateau')
    scales = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1]
    eps = [0.1 * s for s in scales]
  else:
    config = make_config(schedule='epochs', lr_drop_epochs=(3, 5))
    scales = None
    eps = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 1))
  got = run_optax(tx, params, grads, scales)
  want = paper_update(params, grads, eps, 0.9, 0.05, 2.0)
  for t, ((p, opt_state), (p_np, v_np)) in enumerate(zip(got, want)):
    assert_trees_close(p, p_np, atol=1e-6)
    assert_trees_close(optax.tree_utils.tree_get(opt_state, 'trace'), v_np, atol=1e-6)
    np.testing.assert_allclose(optimizer.current_learning_rate(opt_state), eps[t],
                               rtol=1e-6)


def test_optax_sgd_differs_from_the_papers_form_only_where_eps_changes():
  """Pins the create_optimizer docstring: same while eps is constant; at the change,
  optax.sgd rescales the whole accumulated velocity by eps_new / eps_old."""
  params, n, change = tiny_params(), 5, 3
  grads = random_grads(params, n)
  eps = [0.1] * change + [0.01] * (n - change)
  schedule = optax.piecewise_constant_schedule(0.1, {change: 0.1})
  sgd = optax.chain(optax.add_decayed_weights(0.05, mask=optimizer.weight_decay_mask),
                    optax.sgd(schedule, momentum=0.9))
  got = [p for p, _ in run_optax(sgd, params, grads)]
  want = paper_update(params, grads, eps, 0.9, 0.05, 1.0)
  for t in range(change):
    assert_trees_close(got[t], want[t][0], atol=1e-6)
  # At the change: the paper keeps v_old and adds -eps_new (wd W + g); optax.sgd's step is
  # (eps_new / eps_old) m v_old - eps_new (wd W + g).
  w_old, v_old = want[change - 1]
  g = jax.tree.map(lambda x: np.asarray(x, np.float64), grads[change])
  for layer in params:
    for leaf, wd in (('kernel', 0.05), ('bias', 0.0)):
      w, v, grad = w_old[layer][leaf], v_old[layer][leaf], g[layer][leaf]
      paper_step = 0.9 * v - 0.01 * (wd * w + grad)
      sgd_step = 0.1 * 0.9 * v - 0.01 * (wd * w + grad)
      np.testing.assert_allclose(got[change][layer][leaf] - w, sgd_step, atol=1e-6)
      assert np.abs(sgd_step - paper_step).max() > 1e-2
      np.testing.assert_allclose(want[change][0][layer][leaf] - w, paper_step, atol=1e-12)


def test_weight_decay_on_kernels_only_and_bias_multiplier():
  params = tiny_params()
  zero = jax.tree.map(np.zeros_like, params)
  config = make_config(momentum=0.0, bias_lr_multiplier=1.0)
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 1))
  updates, _ = tx.update(zero, tx.init(params), params)
  for layer in params:  # Zero gradients: only the decay moves anything.
    np.testing.assert_allclose(updates[layer]['kernel'],
                               -0.1 * 0.05 * params[layer]['kernel'], rtol=1e-6)
    np.testing.assert_array_equal(updates[layer]['bias'], 0.0)

  grads = random_grads(params, 1)[0]
  steps = {}
  for multiplier in (1.0, 2.0):
    config = make_config(momentum=0.0, weight_decay=0.0, bias_lr_multiplier=multiplier)
    tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 1))
    steps[multiplier], _ = tx.update(grads, tx.init(params), params)
  for layer in params:
    np.testing.assert_array_equal(steps[2.0][layer]['kernel'], steps[1.0][layer]['kernel'])
    np.testing.assert_allclose(steps[2.0][layer]['bias'], 2.0 * steps[1.0][layer]['bias'],
                               rtol=1e-7)
    np.testing.assert_allclose(steps[1.0][layer]['bias'], -0.1 * grads[layer]['bias'],
                               rtol=1e-6)


def test_weight_decay_mask_on_the_alexnet_parameters():
  model = models.AlexNet(**alexnet.get_config().model)
  params = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0)}, jnp.zeros((1, 224, 224, 3)), train=False)['params'])
  mask = optimizer.weight_decay_mask(params)
  assert sorted(mask) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
  assert all(m == {'kernel': True, 'bias': False} for m in mask.values())
  with pytest.raises(ValueError, match=r"\['bn'\]\['scale'\] is neither a kernel nor a bias"):
    optimizer.weight_decay_mask({'bn': {'scale': np.ones(3)}})


def test_state_leaves_are_scalars_or_parameter_shaped():
  """The train step shards every leaf with ndim >= 1 on its last axis, like its parameter."""
  params = tiny_params()
  config = make_config()
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config, 1))
  state = tx.init(params)
  shapes = {p.shape for p in jax.tree.leaves(params)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    assert np.ndim(leaf) == 0 or leaf.shape in shapes, jax.tree_util.keystr(path)
  trace = optax.tree_utils.tree_get(state, 'trace')
  assert jax.tree.map(np.shape, trace) == jax.tree.map(np.shape, params)
  assert float(state.hyperparams['lr_scale']) == 1.0
  state = optimizer.set_lr_scale(state, jnp.float32(0.01))
  np.testing.assert_allclose(optimizer.current_learning_rate(state), 0.1 * 0.01, rtol=1e-6)


def lr_at(fn, steps):
  return np.array([float(fn(s)) for s in steps])


def test_epochs_schedule_is_the_original_codes():
  config = alexnet.get_config('original_code')
  spe = 10
  fn = optimizer.create_learning_rate_fn(config, spe)
  steps = [0, 249, 250, 509, 510, 789, 790, 909]
  np.testing.assert_allclose(lr_at(fn, steps),
                             [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-5)
  assert optimizer.total_steps(config, spe) == 910  # Stop at 91 epochs.


def test_step_schedule_divides_by_10_every_lr_step_epochs():
  config = alexnet.get_config()
  config.update(dict(schedule='step', lr_step_epochs=30))
  fn = optimizer.create_learning_rate_fn(config, 10)
  np.testing.assert_allclose(lr_at(fn, [0, 299, 300, 599, 600, 899]),
                             [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)


def test_cosine_schedule_warms_up_then_decays_with_linear_scaling():
  config = alexnet.get_config()
  config.update(dict(schedule='cosine', batch_size=1024, warmup_epochs=5, num_epochs=90))
  spe, peak = 10, 0.01 * 1024 / 128
  fn = optimizer.create_learning_rate_fn(config, spe)
  warmup, total = 50, 900
  np.testing.assert_allclose(lr_at(fn, [0, 25, 50]), [0.0, peak / 2, peak], atol=1e-7)
  t = np.arange(warmup, total + 1)
  np.testing.assert_allclose(lr_at(fn, t),
                             0.5 * peak * (1 + np.cos(np.pi * (t - warmup) / (total - warmup))),
                             atol=1e-6)
  assert float(fn(total)) < 1e-7

  config.warmup_epochs = 90  # As many warm-up steps as the run has: refused before compute.
  config.update({'batch_size': 50, 'num_epochs': 90})
  config.data.update({'dataset': 'folder', 'data_dir': sample.SAMPLE_DIR})
  config.model.num_classes = 10
  with pytest.raises(ValueError, match=r'warmup_epochs=90 gives as many warm-up steps as '
                     r'the run has \(900\)'):
    checks.check_data(config)


def test_plateau_base_rate_is_constant_and_unknown_schedule_is_an_error():
  config = alexnet.get_config()
  assert config.schedule == 'plateau'
  np.testing.assert_allclose(
      lr_at(optimizer.create_learning_rate_fn(config, 10), [0, 1, 500, 10**6]), 0.01)
  config.schedule = 'linear'
  with pytest.raises(ValueError, match=r"config.schedule='linear' must be one of"):
    optimizer.create_learning_rate_fn(config, 10)


def plateau_scales(config, errors):
  plateau = optimizer.create_plateau(config)
  state = plateau.init(tiny_params())
  scales = []
  for error in errors:
    state = optimizer.update_plateau(plateau, state, error)
    scales.append(float(state.scale))
  return np.array(scales), state


def test_plateau_drops_after_patience_at_most_max_drops_times():
  config = alexnet.get_config()
  assert (config.plateau_patience, config.plateau_max_drops) == (2, 3)
  errors = [0.9, 0.8] + [0.8] * 10
  scales, _ = plateau_scales(config, errors)
  want = [1, 1, 1, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]
  np.testing.assert_allclose(scales, want, rtol=1e-6)
  assert np.count_nonzero(np.diff(scales)) == 3  # Never a fourth change, however small.

  config.plateau_patience = 3
  scales, _ = plateau_scales(config, [0.5, 0.6, 0.7, 0.8])
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1], rtol=1e-6)

  config.plateau_patience = 1
  for drops in (0, 2, 4):  # 0.1 ** drops is not a float32 product for 2 and 4.
    config.plateau_max_drops = drops
    scales, _ = plateau_scales(config, [0.5] * 8)
    assert np.count_nonzero(np.diff(np.concatenate([[1.0], scales]))) == drops
    assert scales[-1] == pytest.approx(0.1 ** drops, rel=1e-6)


def test_plateau_improving_errors_never_drop():
  scales, _ = plateau_scales(alexnet.get_config(), np.linspace(0.9, 0.4, 12))
  np.testing.assert_array_equal(scales, 1.0)


def test_plateau_state_round_trips_through_a_pytree():
  config = alexnet.get_config()
  plateau = optimizer.create_plateau(config)
  _, state = plateau_scales(config, [0.9, 0.8, 0.8, 0.8, 0.8])
  leaves, treedef = jax.tree.flatten(state)
  restored = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
  assert type(restored) is type(state)
  for error in [0.8, 0.7, 0.7, 0.7]:  # Continues identically from the restored copy.
    state = optimizer.update_plateau(plateau, state, error)
    restored = optimizer.update_plateau(plateau, restored, error)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(a, b)
  assert float(state.scale) == pytest.approx(1e-3, rel=1e-6)


def test_total_steps():
  config = alexnet.get_config()
  assert optimizer.total_steps(config, 10) == 900
  assert optimizer.run_length(config, 10 * 128 + 127) == (10, 900)  # Whole batches only.
  config.num_train_steps = 7
  assert optimizer.total_steps(config, 10) == 7
