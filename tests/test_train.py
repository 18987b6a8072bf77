"""The model-parallel training step: every mesh computes the same step as one device."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax import models
from alexnet_jax import partitioning
from alexnet_jax import pixels
from alexnet_jax import steps
from configs import alexnet

# 67 x 67 inputs keep the network's structure (conv1 15 x 15 -> pool5 1 x 1 x 256) at a
# fraction of the cost of 224 x 224; the equalities tested do not depend on the size.
SIZE = 67


def devices(n):
  """The first n devices; the test is skipped where there are fewer (one GPU: the CPU's
  four are emulated, tests/conftest.py)."""
  if jax.device_count() < n:
    pytest.skip(f'needs {n} devices, {jax.device_count()} here')
  return jax.devices()[:n]


def small_config(**model):
  config = alexnet.get_config()
  config.model.num_classes = 10
  config.model.update(model)
  config.data.image_size = SIZE
  config.batch_size = 8
  config.learning_rate = 0.05  # Large enough that the updates are visible in float32.
  return config


def random_batches(n, batch=8, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8),
           'lighting': rng.normal(0, 10, (batch, 3)).astype(np.float32),
           'label': rng.integers(0, 10, batch).astype(np.int32)} for _ in range(n)]


def run(config, data, model_size, batches):
  """Runs the train step over `batches` on a data x model mesh; returns host results."""
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': data, 'model': model_size}),
                                  devices(data * model_size))
  _, state, step, _ = steps.setup(config, mesh, 100, pixels.CHANNEL_MEAN)
  first_trace, losses = None, []
  for batch in batches:
    state, metrics = step(state, partitioning.global_batch(mesh, batch))
    losses.append(float(metrics['loss']))
    if first_trace is None:  # After one step the momentum is -lr * (grad + wd * W).
      first_trace = jax.device_get(optax.tree_utils.tree_get(state.opt_state, 'trace'))
  return {'loss': np.array(losses), 'params': jax.device_get(state.params),
          'trace': first_trace, 'step': int(state.step)}


# Another mesh sums in another order (a column's half, then both): float32 rounding, up to
# 1.2e-5 of a leaf's largest value after two steps on some CPUs. A wrong mask, layout or
# collective is off by orders of magnitude more.
MESH_RTOL = 3e-5


def assert_trees_close(a, b, rtol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    scale = np.abs(x).max() + 1e-12
    err = np.abs(np.asarray(x) - np.asarray(y)).max() / scale
    assert err < rtol, f'{jax.tree_util.keystr(path)}: relative error {err:.2e}'


@pytest.fixture(scope='module')
def one_device():
  return run(small_config(), 1, 1, random_batches(2))


@pytest.mark.parametrize('data,model_size', [(1, 2), (2, 2), (2, 1)])
def test_mesh_equals_one_device(one_device, data, model_size):
  """Same initial parameters, batches and dropout masks: loss, gradients, parameters."""
  result = run(small_config(), data, model_size, random_batches(2))
  np.testing.assert_allclose(result['loss'], one_device['loss'], rtol=1e-5)
  assert_trees_close(one_device['trace'], result['trace'], MESH_RTOL)  # Gradients.
  assert_trees_close(one_device['params'], result['params'], MESH_RTOL)
  assert result['step'] == 2


def jaxpr_ops(jaxpr):
  """Every equation of a jaxpr and of the jaxprs inside it (shard_map, jit, cond)."""
  yield from jaxpr.eqns
  for sub in jax.extend.core.subjaxprs(jaxpr):
    yield from jaxpr_ops(sub)


@pytest.mark.parametrize('data,model_size', [(1, 1), (2, 2)])
def test_each_device_draws_the_dropout_bits_of_its_shard_only(data, model_size):
  """The per-device step draws, for fc6 and for fc7, the mask of its own examples and
  units: [8 / data examples, 2 / model columns, 2048 units], a (data x model)-th of the
  global [8, 4096] mask; the mesh tests above show the masks are the same on every mesh.
  """
  config = small_config()
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': data, 'model': model_size}),
                                  devices(data * model_size))
  _, state, step, _ = steps.setup(config, mesh, 100, pixels.CHANNEL_MEAN)
  jaxpr = step.trace(state, partitioning.global_batch(mesh, random_batches(1)[0])).jaxpr.jaxpr
  draws = [eqn.outvars[0].aval.shape for eqn in jaxpr_ops(jaxpr)
           if eqn.primitive.name == 'random_bits']
  assert draws == [(8 // data, 2 // model_size, 2048)] * 2


def test_caffes_lrn_across_columns_on_model2_equals_one_device():
  """The LRN window crosses the two devices' columns (gathered): the same step."""
  config = small_config(lrn_k=1.0, lrn_across_columns=True)
  config.data.channel_order = 'bgr'
  one = run(config, 1, 1, random_batches(2))
  split = run(config, 1, 2, random_batches(2))
  np.testing.assert_allclose(split['loss'], one['loss'], rtol=1e-5)
  assert_trees_close(one['trace'], split['trace'], MESH_RTOL)
  assert_trees_close(one['params'], split['params'], MESH_RTOL)
  # And the window does cross: a per-column LRN gives other gradients.
  config.model.lrn_across_columns = False
  within = run(config, 1, 1, random_batches(2))
  assert np.abs(within['trace']['conv1']['kernel'] - one['trace']['conv1']['kernel']).max() > 0


def test_training_reduces_loss_on_a_fixed_batch():
  config = small_config(dropout_rate=0.0)
  config.learning_rate = 0.001
  result = run(config, 1, 2, random_batches(1) * 8)
  assert result['loss'][-1] < min(np.log(10), 0.7 * result['loss'][0]), result['loss']


def test_nonfinite_step_is_skipped_and_reported():
  config = small_config()
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 1, 'model': 2}),
                                  devices(2))
  _, state, step, _ = steps.setup(config, mesh, 100, pixels.CHANNEL_MEAN)
  before = jax.device_get(state.params)
  batch = random_batches(1)[0]
  batch['lighting'][0, 0] = np.nan
  state, metrics = step(state, partitioning.global_batch(mesh, batch))
  assert int(metrics['nonfinite']) == 1
  assert int(state.step) == 1  # Counted, so the data stays aligned with the step.
  assert_trees_close(before, jax.device_get(state.params), 1e-12)


# (mesh.model outside 0, 1, 2 is checks.validate's: tests/test_reliability.py.)
@pytest.mark.parametrize('mesh_config,devices,message', [
    ({'data': -1, 'model': 2}, 3, 'does not divide the 3 device'),
    ({'data': 3, 'model': 1}, 4, 'must equal the number of devices'),
])
def test_bad_mesh_is_a_clear_error(mesh_config, devices, message):
  with pytest.raises(ValueError, match=message):
    partitioning.create_mesh(ml_collections.ConfigDict(mesh_config), jax.devices('cpu')[:devices])


@pytest.mark.parametrize('devices,columns,shape', [(1, 2, (1, 1)), (4, 2, (2, 2)),
                                                   (3, 2, (3, 1)), (4, 1, (4, 1))])
def test_mesh_model_0_chooses_the_paper_split_where_the_devices_allow(devices, columns, shape,
                                                                     caplog):
  """The configs' default: a column per device on an even device count, else none; the
  log says which and why."""
  mesh_config = ml_collections.ConfigDict({'data': -1, 'model': 0})
  with caplog.at_level('INFO'):
    mesh = partitioning.create_mesh(mesh_config, jax.devices('cpu')[:devices], columns)
  assert (mesh.shape['data'], mesh.shape['model']) == shape
  logged = caplog.text
  assert f'Mesh data={shape[0]} x model={shape[1]} over {devices} cpu device(s)' in logged
  assert ('as the paper split its net over two GPUs' in logged) == (shape[1] == 2)


def test_top5_is_top_k_of_the_classes_there_are():
  """With 4 classes every label is in the top 5 (top-4): top-5 error 0."""
  config = small_config(num_classes=4)
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 1, 'model': 1}),
                                  devices(1))
  model = models.AlexNet(**config.model)
  params = model.init({'params': jax.random.key(0)}, jnp.zeros((1, SIZE, SIZE, 3)),
                      train=False)['params']
  step = steps.make_eval_step(model, mesh, params, jnp.asarray(pixels.CHANNEL_MEAN))
  batch = random_batches(1)[0]
  batch = {'image': batch['image'], 'label': batch['label'] % 4,
           'mask': np.ones(8, bool)}
  sums = jax.device_get(step(params, partitioning.global_batch(mesh, batch)))
  assert sums['count'] == 8 and sums['top5_correct'] == 8
  assert sums['top1_correct'] < 8


def test_ten_views_also_score_the_centre_view_alone():
  """With views, the step also counts the centre view's own top-1/top-5 (view 2 of
  preprocessing.ten_views), equal to a one-view evaluation of that view."""
  config = small_config(num_classes=4)
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 1, 'model': 1}),
                                  jax.devices()[:1])
  model = models.AlexNet(**config.model)
  params = model.init({'params': jax.random.key(0)}, jnp.zeros((1, SIZE, SIZE, 3)),
                      train=False)['params']
  step = steps.make_eval_step(model, mesh, params, jnp.asarray(pixels.CHANNEL_MEAN))
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, (8, 10, SIZE, SIZE, 3), np.uint8)
  labels, mask = rng.integers(0, 4, 8).astype(np.int32), np.arange(8) < 7
  ten = jax.device_get(step(params, partitioning.global_batch(
      mesh, {'image': views, 'label': labels, 'mask': mask})))
  centre = jax.device_get(step(params, partitioning.global_batch(
      mesh, {'image': views[:, pixels.VIEWS.index('center')], 'label': labels,
             'mask': mask})))
  assert 'centre_top1_correct' not in centre
  assert ten['centre_top1_correct'] == centre['top1_correct']
  assert ten['centre_top5_correct'] == centre['top5_correct']
  assert ten['count'] == centre['count'] == 7


def test_the_layout_is_declared_by_parameter_name():
  """PARAM_LAYOUT's rules place each parameter by its path; an unnamed one is an error."""
  shapes = {'conv1': {'kernel': (11, 11, 3, 96), 'bias': (96,)}, 'fc8': {'kernel': (4096, 10)}}
  params = jax.tree.map(np.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
  assert partitioning.param_specs(params) == {
      'conv1': {'kernel': P(None, None, None, 'model'), 'bias': P('model')},
      'fc8': {'kernel': P(None, 'model')}}
  with pytest.raises(ValueError, match='No rule in partitioning.PARAM_LAYOUT places parameter '
                     r'fc9/kernel \(shape \(4, 2\)\)'):
    partitioning.param_specs({'fc9': {'kernel': np.zeros((4, 2))}, 'fc8': {'bias': np.zeros(2)}})


def test_the_optimizer_state_is_laid_out_as_the_parameters():
  """The momentum is split as its parameter (on the device, too); every other leaf of the
  state (step, counts, learning rates, the plateau schedule) is replicated."""
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 1, 'model': 2}),
                                  devices(2))
  _, state = steps.initial_state(small_config(), mesh)
  specs = partitioning.state_specs(state)
  assert optax.tree_utils.tree_get(specs.opt_state, 'trace') == specs.params
  trace = optax.tree_utils.tree_get(state.opt_state, 'trace')
  assert jax.tree.map(lambda x: x.sharding.spec, trace) == specs.params
  is_spec = lambda x: isinstance(x, P)
  rest = specs.replace(params=None, opt_state=optax.tree_utils.tree_set(
      specs.opt_state, trace=None))
  assert jax.tree.leaves(rest, is_leaf=is_spec) and all(
      s == P() for s in jax.tree.leaves(rest, is_leaf=is_spec))


def test_set_plateau_divides_the_stepped_learning_rate_by_ten_after_patience():
  """The loop's plateau update: the schedule's state (fed errors that stop improving) and
  the learning rate the next step uses, 0.1x after plateau_patience evaluations without
  improvement (the paper's "divide by 10"), as the hand count says."""
  config = small_config()
  config.schedule, config.plateau_patience = 'plateau', 2
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 1, 'model': 1}),
                                  devices(1))
  _, state, step, _ = steps.setup(config, mesh, 100, pixels.CHANNEL_MEAN)
  rates = []
  for error in (0.5, 0.5, 0.5, 0.5):  # Improves once (the first), then twice not: a drop.
    state = steps.set_plateau(state, config, error, mesh)
    state, metrics = step(state, partitioning.global_batch(mesh, random_batches(1)[0]))
    rates.append(float(metrics['learning_rate']))
  assert rates == pytest.approx([0.05, 0.05, 0.005, 0.005])
  assert float(state.plateau_state.scale) == pytest.approx(0.1)
