"""The network against the paper's tables, TF's and PyTorch's LRN, NumPy, and PyTorch.

The PyTorch oracle is tests/torch_alexnet.py, written independently of models.py; the
parity tests copy our parameters into it and compare logits.
"""

import collections
import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from alexnet_jax import checks
from alexnet_jax import models
from configs import alexnet
from tests import torch_alexnet
from tests.conftest import REPO

# Per-channel mean of the 0-255 RGB training images (cuda-convnet2; docs/reference.md, Data).
MEAN_RGB = np.array([127.3, 119.7, 104.9], np.float32)
# The original code's LRN: k = 2, n = 5, alpha' = alpha / n = 2e-5, beta = 0.75.
K, SIZE, ALPHA, BETA = 2.0, 5, 1e-4, 0.75

# The paper's shapes (Section 3.5, Figure 2) for one image, both columns together.
PAPER_SHAPES = {'conv1': (55, 55, 96), 'conv2': (27, 27, 256), 'conv3': (13, 13, 384),
                'conv4': (13, 13, 384), 'conv5': (13, 13, 256), 'pool5': (6, 6, 256),
                'fc6': (4096,), 'fc7': (4096,), 'logits': (1000,)}
# The parameter counts (weights + biases) of the two-column net (docs/network.md).
PAPER_COUNTS = {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120, 'conv4': 663_936,
                'conv5': 442_624, 'fc6': 37_752_832, 'fc7': 16_781_312, 'fc8': 4_097_000}


def images(n, size=224, seed=0):
  """Pixel-like [n, size, size, 3] float32: uniform 0-255 minus the channel mean."""
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 255, (n, size, size, 3)) - MEAN_RGB).astype(np.float32)


def rel_err(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def abstract_init(model, size=224):
  """(features, variables) as ShapeDtypeStructs: shapes without computing anything."""
  return jax.eval_shape(functools.partial(
      model.init_with_output, train=False, return_features=True),
                        {'params': jax.random.key(0)}, jnp.zeros((1, size, size, 3)))


def param_counts(params):
  return {name: sum(math.prod(p.shape) for p in layer.values())
          for name, layer in params.items()}


@functools.lru_cache(maxsize=None)
def random_params(columns=2, seed=0, widths=models.WIDTHS, removed_layer=''):
  """He-scaled random weights and N(0, 1) biases in the model's layout, 10 classes.

  Drawn with NumPy from the shapes alone (cheaper than model.init); biases are not zero
  so that their conversion to PyTorch is checked too. Cached: treat as read-only.
  """
  _, variables = abstract_init(models.AlexNet(num_classes=10, columns=columns, widths=widths,
                                              removed_layer=removed_layer))
  rng = np.random.default_rng(seed)
  draw = lambda shape, std: (std * rng.standard_normal(shape, np.float32)).astype(np.float32)
  return {name: {'kernel': draw(layer['kernel'].shape,
                                math.sqrt(2.0 / math.prod(layer['kernel'].shape[:-1]))),
                 'bias': draw(layer['bias'].shape, 1.0)}
          for name, layer in variables['params'].items()}


def jax_forward(model, params, x, **kwargs):
  return jax.jit(functools.partial(model.apply, train=False, **kwargs))(
      {'params': params}, x)


# --- Local response normalisation ----------------------------------------------------


def lrn_normaliser(x, y, beta=BETA):
  """k + alpha' * window, recovered from an LRN's input and output."""
  return (x / y) ** (1.0 / beta)


@pytest.fixture(name='tf')
def tensorflow_oracle():
  """TensorFlow, an LRN oracle; skipped where it is not installed (the device check's GPU
  machine may lack it)."""
  return pytest.importorskip('tensorflow')


def large_activations(shape, seed=0, scale=100.0):
  """Post-ReLU-like values big enough that alpha' * sum x^2 is of the order of k."""
  rng = np.random.default_rng(seed)
  return (scale * np.abs(rng.standard_normal(shape)) + 1.0).astype(np.float32)


def test_lrn_matches_tensorflow(tf):
  x = large_activations((2, 5, 5, 32))
  want = tf.nn.local_response_normalization(x, depth_radius=2, bias=K, alpha=ALPHA / SIZE,
                                            beta=BETA).numpy()
  # The normaliser is far from k, so a wrong alpha, window or beta shows.
  assert np.median(lrn_normaliser(x, want) / K - 1.0) > 0.2
  got = models.local_response_norm(jnp.asarray(x), size=SIZE, k=K, alpha=ALPHA, beta=BETA)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_lrn_matches_pytorch():
  x = large_activations((2, 5, 5, 32), seed=1)
  norm = torch.nn.LocalResponseNorm(SIZE, alpha=ALPHA, beta=BETA, k=K)
  want = norm(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  assert np.median(lrn_normaliser(x, want) / K - 1.0) > 0.2
  got = models.local_response_norm(jnp.asarray(x), size=SIZE, k=K, alpha=ALPHA, beta=BETA)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_lrn_literal_paper_reading(tf):
  """The paper's alpha = 1e-4 multiplying the sum is lrn_alpha = 5e-4 here, 5x stronger."""
  x = large_activations((2, 4, 4, 16), seed=2)
  want = tf.nn.local_response_normalization(x, depth_radius=2, bias=K, alpha=1e-4,
                                            beta=BETA).numpy()
  got = models.local_response_norm(jnp.asarray(x), size=SIZE, k=K, alpha=5e-4, beta=BETA)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  default = models.local_response_norm(jnp.asarray(x), size=SIZE, k=K, alpha=ALPHA,
                                       beta=BETA)
  assert rel_err(default, want) > 0.1


def numpy_lrn(x, size=SIZE, k=K, alpha=ALPHA, beta=BETA):
  """The definition, one channel at a time, the window clipped at the channel ends."""
  x = x.astype(np.float64)
  c = x.shape[-1]
  y = np.empty_like(x)
  for i in range(c):
    lo, hi = max(0, i - size // 2), min(c, i + size // 2 + 1)
    window = np.sum(x[..., lo:hi] ** 2, axis=-1)
    y[..., i] = x[..., i] * (k + alpha / size * window) ** -beta
  return y


def test_lrn_window_clipped_at_channel_ends():
  x = large_activations((3, 2, 2, 8), seed=3)
  got = np.asarray(models.local_response_norm(jnp.asarray(x), size=SIZE, k=K,
                                              alpha=ALPHA, beta=BETA))
  np.testing.assert_allclose(got, numpy_lrn(x), rtol=1e-6)
  # Spelled out: channel 0 sees channels 0-2 only, the last channel the last three.
  first = x[..., 0] * (K + ALPHA / SIZE * np.sum(x[..., :3] ** 2, -1)) ** -BETA
  last = x[..., -1] * (K + ALPHA / SIZE * np.sum(x[..., -3:] ** 2, -1)) ** -BETA
  np.testing.assert_allclose(got[..., 0], first, rtol=1e-6)
  np.testing.assert_allclose(got[..., -1], last, rtol=1e-6)


def test_lrn_per_column():
  """With groups=2 the window never crosses the middle of the channel axis."""
  x = large_activations((2, 3, 3, 16), seed=4)
  lrn = functools.partial(models.local_response_norm, size=SIZE, k=K, alpha=ALPHA,
                          beta=BETA)
  got = np.asarray(lrn(jnp.asarray(x), groups=2))
  halves = [lrn(jnp.asarray(x[..., :8])), lrn(jnp.asarray(x[..., 8:]))]
  np.testing.assert_array_equal(got, np.concatenate(halves, axis=-1))
  np.testing.assert_allclose(got[..., :8], numpy_lrn(x[..., :8]), rtol=1e-6)
  np.testing.assert_allclose(got[..., 8:], numpy_lrn(x[..., 8:]), rtol=1e-6)
  # Changing column 1 moves column 1 only.
  x2 = x.copy()
  x2[..., 8:] *= 3.0
  got2 = np.asarray(lrn(jnp.asarray(x2), groups=2))
  np.testing.assert_array_equal(got2[..., :8], got[..., :8])
  assert rel_err(got2[..., 8:], 3.0 * got[..., 8:]) > 0.1
  # Without groups the channels next to the middle do see the other column.
  ungrouped = np.asarray(lrn(jnp.asarray(x2)))
  assert not np.allclose(ungrouped[..., 6:8], got[..., 6:8], rtol=1e-3)


def test_spatial_norm_matches_numpy():
  rng = np.random.default_rng(5)
  x = (30.0 * np.abs(rng.standard_normal((2, 7, 6, 3)))).astype(np.float32)
  size, scale, power = 5, 4e-5, 0.75
  want = np.empty(x.shape, np.float64)
  b, h, w, c = x.shape
  for n in range(b):
    for i in range(h):
      for j in range(w):
        for ch in range(c):
          patch = x[n, max(0, i - 2):i + 3, max(0, j - 2):j + 3, ch].astype(np.float64)
          want[n, i, j, ch] = x[n, i, j, ch] * (1 + scale * np.sum(patch ** 2)) ** -power
  norm = (x / want) ** (1 / power)
  assert np.median(norm - 1.0) > 0.2
  got = models.spatial_norm(jnp.asarray(x), size=size, scale=scale, power=power)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# --- Shapes and parameter counts -----------------------------------------------------


@pytest.mark.parametrize('kwargs,size', [
    ({}, 224),  # conv1_padding='paper': the 224 crop padded (0, 3).
    ({'conv1_padding': 'valid'}, 227),  # Caffe's 227 crop, no padding.
    # Non-overlapping 2/2 pooling, VALID: 55 -> 27, 27 -> 13, 13 -> 6, as 3/2 gives.
    ({'pool_window': 2, 'pool_stride': 2}, 224),
    ({'columns': 1}, 224),  # One column of the same widths.
])
def test_shape_table(kwargs, size):
  feats, _ = abstract_init(models.AlexNet(**kwargs), size)
  assert set(feats) == set(models.LAYERS)
  assert {name: f.shape[1:] for name, f in feats.items()} == PAPER_SHAPES
  assert math.prod(feats['pool5'].shape[1:]) == 9216


def test_conv1_padding_is_what_gives_55():
  """Without the (0, 3) padding a 224 input gives 54 x 54 (floor((224 - 11) / 4) + 1)."""
  feats, _ = abstract_init(models.AlexNet(conv1_padding='valid'), 224)
  assert feats['conv1'].shape[1:] == (54, 54, 96)


def test_parameter_counts_two_columns():
  _, variables = abstract_init(models.AlexNet(num_classes=1000))
  counts = param_counts(variables['params'])
  assert counts == PAPER_COUNTS
  assert sum(counts.values()) == 60_965_224


def test_parameter_counts_one_column():
  _, variables = abstract_init(models.AlexNet(num_classes=1000, columns=1))
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  want = {'conv1': conv(11, 3, 96), 'conv2': conv(5, 96, 256), 'conv3': conv(3, 256, 384),
          'conv4': conv(3, 384, 384), 'conv5': conv(3, 384, 256),
          'fc6': 9216 * 4096 + 4096, 'fc7': 4096 * 4096 + 4096, 'fc8': 4096 * 1000 + 1000}
  assert param_counts(variables['params']) == want
  # Only the column-local layers change: each sees all 96, 256 or 384 input maps now.
  assert sum(want.values()) == 60_965_224 + (307_200 + 663_552 + 442_368)


def test_parameter_counts_of_the_claims_variants():
  """The one-column comparison net (layers-145-half) and the net without conv4, by hand."""
  conv = lambda k, cin, cout, groups=1: k * k * cin // groups * cout + cout
  fc = lambda cin, cout: cin * cout + cout
  dense = fc(6 * 6 * 256, 4096) + fc(4096, 4096) + fc(4096, 1000)
  half = alexnet.get_config('one_column_half').model
  _, variables = abstract_init(models.AlexNet(**{**half, 'num_classes': 1000}))
  assert sum(param_counts(variables['params']).values()) == (
      conv(11, 3, 48) + conv(5, 48, 128) + conv(3, 128, 192) + conv(3, 192, 192)
      + conv(3, 192, 256) + dense) == 59_798_312
  _, variables = abstract_init(models.AlexNet(num_classes=1000, removed_layer='conv4'))
  counts = param_counts(variables['params'])
  assert 'conv4' not in counts and counts['conv5'] == conv(3, 384, 256, groups=2)
  assert sum(counts.values()) == 60_965_224 - conv(3, 384, 384, groups=2) == 60_301_288


# --- Initialisation ------------------------------------------------------------------

ONE_BIAS = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')


def expected_std(scheme, name, kernel_shape):
  if scheme == 'he':
    return math.sqrt(2.0 / math.prod(kernel_shape[:-1]))  # fan_in = all but outputs.
  if scheme == 'original_code' and name in ('conv3', 'conv4', 'conv5'):
    return 0.03
  return 0.01


@pytest.mark.parametrize('scheme', ['paper', 'original_code', 'he'])
def test_initialisation(scheme, request):
  if scheme == 'paper':  # The default config's: already initialised by the API test.
    params = request.getfixturevalue('public_api')[0]['params']
  else:
    model = models.AlexNet(num_classes=10, init_scheme=scheme)
    # An 'rbg' key: the same initialisers; its generator compiles twice as fast on CPU.
    params = jax.jit(functools.partial(model.init, train=False))(
        {'params': jax.random.key(0, impl='rbg')}, jnp.zeros((1, 224, 224, 3)))['params']
  for name, layer in params.items():
    kernel = np.asarray(layer['kernel'])
    want = expected_std(scheme, name, kernel.shape)
    assert abs(kernel.std() / want - 1.0) < 0.03, (name, kernel.std(), want)
    assert abs(kernel.mean()) < 0.05 * want, name
    bias = 1.0 if scheme != 'he' and name in ONE_BIAS else 0.0
    np.testing.assert_array_equal(layer['bias'], np.full(kernel.shape[-1], bias))


# --- Ways of computing the same network ----------------------------------------------


# Our hand-written paths, chosen on a 2-core CPU; XLA's own ops are models.XLA_IMPLS.
OURS = {'lrn_impl': 'custom', 'pool_impl': 'custom', 'group_impl': 'split'}


def test_implementations_by_backend():
  """'auto' is the measured choice on CPU and XLA's own ops elsewhere; a value set wins."""
  assert models.implementations(backend='cpu') == models.IMPLS['cpu']
  assert models.implementations(backend='gpu') == models.XLA_IMPLS
  assert models.implementations(backend='tpu') == models.XLA_IMPLS
  assert models.implementations('xla', backend='cpu')['lrn_impl'] == 'xla'
  assert models.implementations(group_impl='split', backend='gpu')['group_impl'] == 'split'
  assert models.implementations() == models.IMPLS.get(jax.default_backend(),
                                                       models.XLA_IMPLS)


@pytest.mark.parametrize('size,beta,groups', [(5, 0.75, 2), (5, 0.75, 1), (4, 0.6, 2)])
def test_lrn_impls_equal_in_values_and_gradients(size, beta, groups):
  x = large_activations((2, 5, 6, 16), seed=6)
  ct = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
  out = {}
  for impl in ('custom', 'xla'):
    lrn = functools.partial(models.local_response_norm, size=size, k=K, alpha=ALPHA,
                            beta=beta, groups=groups, impl=impl)
    y, vjp = jax.vjp(lrn, jnp.asarray(x))
    out[impl] = (y, vjp(jnp.asarray(ct))[0])
  np.testing.assert_array_equal(out['xla'][0], out['custom'][0])  # The same formula.
  np.testing.assert_allclose(out['xla'][1], out['custom'][1], rtol=1e-5, atol=1e-7)
  # The cross-channel term of the gradient is large enough to show.
  assert rel_err(out['custom'][1], ct / lrn_normaliser(x, np.asarray(out['custom'][0]),
                                                       beta) ** beta) > 0.05


@pytest.mark.parametrize('window,stride,shape', [
    (3, 2, (2, 13, 13, 4)), (3, 2, (2, 12, 11, 4)), (2, 2, (2, 8, 9, 4)),
    (3, 3, (1, 10, 10, 2))])
def test_max_pool_impls_equal_with_ties(window, stride, shape):
  """Integer inputs tie in most windows; both send the gradient to the first maximum."""
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.integers(0, 3, shape).astype(np.float32))
  pool = {impl: functools.partial(models.max_pool, window=window, stride=stride, impl=impl)
          for impl in ('custom', 'xla')}
  y, vjp = jax.vjp(pool['custom'], x)
  ct = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
  y_xla, vjp_xla = jax.vjp(pool['xla'], x)
  np.testing.assert_array_equal(y_xla, y)
  np.testing.assert_allclose(vjp_xla(ct)[0], vjp(ct)[0], rtol=1e-6, atol=1e-6)
  # Many windows hold their maximum more than once: the choice among ties is tested.
  ho, wo = y.shape[1:3]
  taps = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
          for i in range(window) for j in range(window)]
  assert np.mean(sum(t == y for t in taps) > 1) > 0.25


def random_params_for(size):
  """random_params() with fc6's rows cut to the pool5 of a `size` x `size` input."""
  feats, _ = abstract_init(models.AlexNet(num_classes=10), size)
  rows = math.prod(feats['pool5'].shape[1:])
  params = random_params()
  fc6 = params['fc6']['kernel'][:rows] * math.sqrt(9216 / rows)  # He-scaled for `rows`.
  return {**params, 'fc6': {'kernel': fc6, 'bias': params['fc6']['bias']}}


@pytest.mark.parametrize('switch', [{'lrn_impl': 'xla'}, {'pool_impl': 'xla'},
                                    {'group_impl': 'feature_group'}, models.XLA_IMPLS])
def test_xla_ops_equal_ours_in_values_and_gradients(switch):
  """Every named activation, and the gradient of the loss for the input and for every
  parameter, with one op (or all) computed by XLA's own version instead of ours."""
  size = 99  # conv1 23 x 23 -> pool5 2 x 2: every layer, a fifth of 224's FLOPs.
  x = jnp.asarray(images(2, size))
  labels = jnp.array([3, 7])
  params = jax.tree.map(jnp.asarray, random_params_for(size))

  def run(impls):
    model = models.AlexNet(num_classes=10, **impls)

    def loss(params, x):
      feats = model.apply({'params': params}, x, train=False, return_features=True)
      return -jax.nn.log_softmax(feats['logits'])[jnp.arange(2), labels].mean(), feats

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)

  (our_grads, our_feats), (grads, feats) = run(OURS), run({**OURS, **switch})
  # Measured on CPU: activations equal, gradients within 5e-7.
  for name in models.LAYERS:
    assert rel_err(feats[name], our_feats[name]) < 2e-6, name
  assert rel_err(grads[1], our_grads[1]) < 2e-6, 'input'
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(our_grads[0]),
                               jax.tree.leaves(grads[0])):
    assert rel_err(got, want) < 2e-6, jax.tree_util.keystr(path)


def primitive_counts(jaxpr):
  """{primitive name: count} over a jaxpr and the jaxprs inside it; convolutions with
  feature_group_count=2 counted as 'grouped_conv' too."""
  counts = collections.Counter()
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    if eqn.params.get('feature_group_count', 1) > 1:
      counts['grouped_conv'] += 1
  for sub in jax.extend.core.subjaxprs(jaxpr):
    counts += primitive_counts(sub)
  return counts


@pytest.mark.parametrize('switch,want', [
    ({}, {'custom_vjp_call': 5, 'select_and_scatter_add': 0, 'grouped_conv': 0}),
    ({'lrn_impl': 'xla'}, {'custom_vjp_call': 3, 'select_and_scatter_add': 0,
                           'grouped_conv': 0}),
    ({'pool_impl': 'xla'}, {'custom_vjp_call': 2, 'select_and_scatter_add': 3,
                            'grouped_conv': 0}),
    ({'group_impl': 'feature_group'}, {'custom_vjp_call': 5, 'select_and_scatter_add': 0,
                                       'grouped_conv': 6}),
    (models.XLA_IMPLS, {'custom_vjp_call': 0, 'select_and_scatter_add': 3,
                        'grouped_conv': 6}),
])
def test_the_switches_choose_the_ops(switch, want):
  """The gradient's program holds our gradients (custom_vjp: 2 LRNs, 3 pools) or XLA's
  ops (select_and_scatter_add, grouped convolutions for conv2, conv4, conv5), as asked."""
  model = models.AlexNet(num_classes=10, **{**OURS, **switch})
  x = jnp.asarray(images(1, 67))
  params = abstract_init(model, 67)[1]
  loss = lambda p: model.apply(p, x, train=False).sum()
  counts = primitive_counts(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  assert {name: counts[name] for name in want} == want


def test_bfloat16_compute():
  model = models.AlexNet(num_classes=10, dtype='bfloat16')
  _, variables = abstract_init(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  params = random_params()
  x = images(2)
  feats = jax_forward(model, params, x, return_features=True)
  assert feats['conv1'].dtype == jnp.bfloat16
  assert feats['logits'].dtype == jnp.float32
  want = jax_forward(models.AlexNet(num_classes=10), params, x)
  err = rel_err(feats['logits'], want)
  print(f'bfloat16 vs float32 logits: relative error {err:.2e}')
  assert 0 < err < 5e-2


# --- Dropout -------------------------------------------------------------------------


def test_dropout():
  params = random_params()
  # fc6's bias keeps every unit alive, and fc7 = the identity: fc7's output is then the
  # dropped-out fc6 itself.
  params = {**params, 'fc6': {**params['fc6'], 'bias': np.full(4096, 1e3, np.float32)},
            'fc7': {'kernel': np.eye(4096, dtype=np.float32),
                    'bias': np.zeros(4096, np.float32)}}
  model = models.AlexNet(num_classes=10)
  x = images(2)

  @jax.jit
  def train_features(params, x, key):
    return model.apply({'params': params}, x, train=True, return_features=True,
                       rngs={'dropout': key})

  features = lambda key: train_features(params, x, key)

  # train=False: deterministic, needs no dropout rng, and fc7 is fc6 unchanged.
  det = jax_forward(model, params, x, return_features=True)
  np.testing.assert_array_equal(det['logits'],
                                jax_forward(model, params, x, return_features=True)['logits'])
  np.testing.assert_allclose(det['fc7'], det['fc6'], rtol=1e-6)

  a, b, c = features(jax.random.key(1)), features(jax.random.key(1)), features(
      jax.random.key(2))
  np.testing.assert_array_equal(a['logits'], b['logits'])
  assert not np.array_equal(a['fc7'], c['fc7'])
  assert not np.allclose(a['logits'], c['logits'])
  fc6, dropped = np.asarray(a['fc6']), np.asarray(a['fc7'])
  np.testing.assert_allclose(fc6, det['fc6'], rtol=1e-5)  # fc6 comes before the dropout.
  assert np.all(fc6 > 0)
  zeroed = np.mean(dropped == 0)
  print(f'dropout: {zeroed:.4f} of {dropped.size} fc6 units zeroed')
  assert abs(zeroed - 0.5) < 0.02, zeroed
  kept = dropped != 0
  # Inverted dropout: the kept units are scaled by 1 / (1 - 0.5).
  np.testing.assert_allclose(dropped[kept], 2.0 * fc6[kept], rtol=1e-6)


# --- Public API and configs ----------------------------------------------------------


@pytest.fixture(scope='module')
def public_api():
  """docs/network.md's snippet, exactly as written; its variables also serve the init test."""
  key = jax.random.key(0)
  images_ = jnp.asarray(images(2))

  cfg = alexnet.get_config()
  model = models.AlexNet(**cfg.model)
  variables = model.init({"params": key}, jnp.zeros((1, 224, 224, 3)), train=False)
  logits = model.apply(variables, images_, train=False)

  return variables, logits


def test_public_api_snippet(public_api):
  variables, logits = public_api
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert sum(param_counts(variables['params']).values()) == 60_965_224


@pytest.mark.parametrize('preset', alexnet.PRESETS)
def test_presets_build_a_model_that_runs(preset):
  cfg = alexnet.get_config(preset)
  model = models.AlexNet(**cfg.model)
  size = 227 if cfg.model.conv1_padding == 'valid' else 224
  _, variables = abstract_init(model, size)  # Builds: every field is accepted.
  assert param_counts(variables['params'])['fc8'] == 4096 * 1000 + 1000
  # Runs, with parameters of its layout (fc8 cut to 10 classes to keep this fast).
  model = models.AlexNet(**{**cfg.model, 'num_classes': 10})
  shape = {k: cfg.model[k] for k in ('columns', 'widths', 'removed_layer')}
  logits = jax_forward(model, random_params(**shape), images(1, size))
  assert logits.shape == (1, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_presets_combine():
  cfg = alexnet.get_config('original_code,bf16')
  assert cfg.model.spatial_norm and cfg.model.dtype == 'bfloat16'


def test_torch_peer_from_config():
  """Benchmarks build the PyTorch peer from the same config.model."""
  cfg = alexnet.get_config('original_code,one_column')
  net = torch_alexnet.AlexNet(**torch_alexnet.kwargs_from_config(cfg.model))
  assert net.lrn1_before_relu and net.use_spatial_norm and net.conv2.groups == 1
  assert abs(net.conv3.weight.std().item() / 0.03 - 1) < 0.03
  assert set(net.state_dict()) == set(torch_alexnet.flax_to_torch(random_params(1)))


def test_unknown_preset():
  with pytest.raises(ValueError, match="Unknown preset 'bogus'.*one_column"):
    alexnet.get_config('bogus')


def test_config_model_holds_alexnets_fields_with_its_defaults():
  """A model field is declared in models.AlexNet (its default) and its rule in checks;
  configs/alexnet.py's config.model repeats it commented with its source, so this keeps
  them equal, and docs/network.md's switch table names every switch (all but num_classes,
  which the data sets)."""
  set_per_call = ('parent', 'name', 'model_axis', 'data_axis')  # Flax's, and the mesh's.
  fields = {f.name: f.default for f in dataclasses.fields(models.AlexNet)
            if f.name not in set_per_call}
  assert alexnet.get_config().model.to_dict() == fields
  text = (REPO / 'docs' / 'network.md').read_text()
  table = text[text.index('| field | default | meaning |'):].split('\n\n')[0]
  named = {n for row in table.splitlines()[2:] for n in re.findall(r'`(\w+)`', row.split('|')[1])}
  assert named == set(fields) - {'num_classes'}


@pytest.mark.parametrize('kwargs,message', [
    ({'columns': 3}, r'model\.columns=3'),
    ({'init_scheme': 'xavier'}, r"model\.init_scheme='xavier'.*'paper'"),
    ({'conv1_padding': 'same'}, r"model\.conv1_padding='same'.*'valid'"),
    ({'group_impl': 'loop'}, r"model\.group_impl='loop'.*'split'"),
    ({'lrn_impl': 'fast'}, r"model\.lrn_impl='fast'.*'custom'"),
    ({'pool_impl': 'reduce_window'}, r"model\.pool_impl='reduce_window'.*'xla'"),
    ({'widths': (96, 256, 384)}, r'model\.widths=\(96, 256, 384\) must be 7 positive'),
    ({'widths': (95, 256, 384, 384, 256, 4096, 4096)}, r'multiple of model\.columns'),
    ({'activation': 'gelu'}, r"model\.activation='gelu'.*'tanh'"),
    ({'removed_layer': 'conv1'}, r"model\.removed_layer='conv1'.*'conv4'"),
])
def test_bad_model_values(kwargs, message):
  config = alexnet.get_config()
  config.model.update(kwargs)
  with pytest.raises(ValueError, match=message):
    checks.validate(config)


# --- Parity with PyTorch -------------------------------------------------------------

PARITY_CASES = {
    'two_columns': {},
    'two_columns_no_lrn': {'lrn': False},
    'one_column': {'columns': 1},
    'one_column_no_lrn': {'columns': 1, 'lrn': False},
    'original_code': {'lrn1_before_relu': True, 'spatial_norm': True},
    'valid_227_pool_2': {'conv1_padding': 'valid', 'pool_window': 2},
    'caffe': {'conv1_padding': 'valid', 'lrn_k': 1.0, 'lrn_across_columns': True},
    'one_column_half': {'columns': 1, 'widths': (48, 128, 192, 192, 256, 4096, 4096)},
    'tanh': {'activation': 'tanh'},
    'no_conv3': {'removed_layer': 'conv3'},
    'no_conv4': {'removed_layer': 'conv4'},
}
SHAPE_FIELDS = ('columns', 'widths', 'removed_layer')


def torch_logits(kwargs, params, x):
  net = torch_alexnet.AlexNet(num_classes=10, **kwargs).eval()
  net.load_state_dict(torch_alexnet.flax_to_torch(params))
  with torch.no_grad():
    return net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize('case', PARITY_CASES)
def test_parity_with_pytorch(case):
  kwargs = PARITY_CASES[case]
  params = random_params(**{k: v for k, v in kwargs.items() if k in SHAPE_FIELDS})
  x = images(2, 227 if kwargs.get('conv1_padding') == 'valid' else 224)
  got = jax_forward(models.AlexNet(num_classes=10, **kwargs), params, x)
  want = torch_logits(kwargs, params, x)
  err = rel_err(got, want)
  print(f'PyTorch parity {case}: relative error {err:.2e}')
  assert err < 1e-4


def test_parity_cases_exercise_the_switches():
  """The inputs are large enough that LRN and the code's quirks change the logits."""
  params = random_params()
  x = images(2)
  base = torch_logits({}, params, x)
  assert rel_err(torch_logits({'lrn': False}, params, x), base) > 0.05
  quirks = {'lrn1_before_relu': True, 'spatial_norm': True}
  assert rel_err(torch_logits(quirks, params, x), base) > 0.05
  across = {'lrn_k': 1.0, 'lrn_across_columns': True}
  assert rel_err(torch_logits(across, params, x), torch_logits({'lrn_k': 1.0}, params, x)) > 1e-3
  assert rel_err(torch_logits({'spatial_norm': True}, params, x), base) > 0.05


def test_parity_features_layout():
  """Every named activation agrees, after NCHW -> NHWC, so fc6's permutation is right."""
  params = random_params()
  x = images(2)
  got = jax_forward(models.AlexNet(num_classes=10), params, x, return_features=True)
  net = torch_alexnet.AlexNet(num_classes=10).eval()
  net.load_state_dict(torch_alexnet.flax_to_torch(params))
  with torch.no_grad():
    want = net.features(torch.from_numpy(x).permute(0, 3, 1, 2))
  for name in models.LAYERS:
    w = want[name].numpy()
    w = w.transpose(0, 2, 3, 1) if w.ndim == 4 else w
    assert rel_err(got[name], w) < 1e-4, name

