"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) as one Flax Linen module.

The paper's network is two columns, one per GPU (Section 3.2, Figure 2). Every layer's
channels are split in two halves; conv2, conv4 and conv5 read only their own column's
maps, conv3 and fc6-fc8 read both. LRN's window stays inside a column too, except in
Caffe's replication (``lrn_across_columns``; configs/alexnet.py preset 'caffe').

One parameter layout serves every way of running it: the last axis of every kernel and
bias is [column 0 | column 1], and a column-local layer's kernel holds one column's input
channels, as a grouped convolution's (conv2: [5, 5, 48, 256]).

* One device (``model_axis=None``): both columns locally, the column-local layers as two
  convolutions (``group_impl='split'``) or one grouped one (``'feature_group'``).
* ``jax.shard_map`` over a mesh axis of size 2 (``model_axis='model'``): every parameter
  sharded on its last axis, a column per device as on the paper's two GPUs; the layers
  that cross columns all-gather their input along channels first.

``model.apply(variables, x, train=False, return_features=True)`` returns the named
activations (``LAYERS``), for feature extraction.

Three ops have two implementations with the same values and gradients
(tests/test_models.py): hand-written ones (chosen per op for the CPU in ``IMPLS``),
reverse mode only, and XLA's own, which XLA can fuse and which support ``jax.jvp``:
``lrn_impl`` ('custom' or 'xla'),
``pool_impl`` ('custom' or 'xla', flax's ``nn.max_pool``) and ``group_impl`` ('split' or
'feature_group'). Each is 'auto' by default: ``IMPLS`` for the platform the program is
lowered for (``lax.platform_dependent``), not the tracing process's backend, so a step
lowered for 'cuda' on a CPU host holds the GPU's ops. 'auto' is reverse mode only where
any platform's choice is 'custom' (forward mode traces every platform's branch).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Activations that can be read out (post-ReLU for conv and fc layers).
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5', 'fc6', 'fc7', 'logits')

# The layers with a width, in order; ``AlexNet.widths`` gives their output channels (units).
WIDTH_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
# Both columns together (paper Section 3.5).
WIDTHS = (96, 256, 384, 384, 256, 4096, 4096)
# The middle convolutional layers one of which may be removed (Section 7).
REMOVABLE = ('conv3', 'conv4', 'conv5')
ACTIVATIONS = ('relu', 'tanh')

INITS = ('paper', 'original_code', 'bvlc', 'he')
# conv1's padding: 'paper' pads a 224 input (0, 3) as the original code; 'valid' reads
# Caffe's 227 crops unpadded.
CONV1_PADDINGS = ('paper', 'valid')
# Compute dtypes; parameters are float32 either way.
DTYPES = ('float32', 'bfloat16')

# The values of the implementation fields; 'auto' chooses by backend from IMPLS.
LRN_IMPLS = ('auto', 'custom', 'xla')
POOL_IMPLS = ('auto', 'custom', 'xla')
GROUP_IMPLS = ('auto', 'split', 'feature_group')

# XLA's own ops: LRN and max pool by autodiff, the grouped convolution.
XLA_IMPLS = {'lrn_impl': 'xla', 'pool_impl': 'xla', 'group_impl': 'feature_group'}
# 'auto' by the platform lowered for (`by_platform`). CPU: the faster of each pair in the
# training step (`python -m benchmarks.paths`; benchmarks/NOTES.md, item 14). Other
# platforms: XLA's own ops, the conventional choice that lets XLA fuse; not measured.
IMPLS = {
    'cpu': {'lrn_impl': 'xla', 'pool_impl': 'custom', 'group_impl': 'split'},
}


def implementations(lrn_impl='auto', pool_impl='auto', group_impl='auto', backend=None):
  """{'lrn_impl', 'pool_impl', 'group_impl'} with each 'auto' replaced by IMPLS[backend]:
  what a program lowered for `backend` computes (``by_platform``).

  backend: 'cpu', 'cuda', 'rocm', 'tpu', ...; None is ``jax.default_backend()``.
  """
  backend = jax.default_backend() if backend is None else backend
  auto = IMPLS.get(backend, XLA_IMPLS)
  chosen = {'lrn_impl': lrn_impl, 'pool_impl': pool_impl, 'group_impl': group_impl}
  return {field: auto[field] if value == 'auto' else value
          for field, value in chosen.items()}


def by_platform(field, value, make, *args):
  """make(impl)(*args), impl = `value`, or for 'auto' IMPLS[platform][field] of the
  platform the program is lowered for (XLA_IMPLS[field] for one IMPLS does not name).

  'auto' is staged out with ``lax.platform_dependent``: every choice is traced, and
  lowering keeps the lowering platform's only, so jit on a GPU, or `.lower(
  lowering_platforms=('cuda',))` and ``jax.export`` for 'cuda' on a CPU host, compile the
  GPU's ops. Where every platform chooses the same, it is called directly.
  """
  if value != 'auto':
    return make(value)(*args)
  default = XLA_IMPLS[field]
  chosen = {platform: impls[field] for platform, impls in IMPLS.items()}
  if all(impl == default for impl in chosen.values()):
    return make(default)(*args)
  fns = {impl: make(impl) for impl in {default, *chosen.values()}}  # One branch an impl.
  return lax.platform_dependent(*args, default=fns[default],
                                **{platform: fns[impl] for platform, impl in chosen.items()})


def local_response_norm(x, *, size=5, k=2.0, alpha=1e-4, beta=0.75, groups=1,
                        impl='custom'):
  """Local response normalisation across channels (paper Section 3.3).

  y_i = x_i * (k + alpha / size * sum_{j in window(i)} x_j^2) ** -beta, the window of
  ``size`` channels centred on i, clipped at the channel axis's ends. ``alpha`` is in the
  original code's, Caffe's and PyTorch's convention (divided by ``size``); the paper's
  text read literally is ``alpha = 5e-4`` for size 5.

  Args:
    x: [..., channels].
    groups: equal channel groups (the columns) the window never crosses, as the original
      code's.
    impl: 'custom' (a hand-written gradient, reverse mode only), 'xla' (autodiff of the
      same formula) or 'auto' (``by_platform``); benchmarks/NOTES.md, items 1 and 14.
  Returns:
    Same shape and dtype as x; the normaliser is computed in float32.
  """
  def make(impl):
    lrn = _lrn if impl == 'custom' else _lrn_formula
    return lambda x: lrn(x, size, float(k), float(alpha), float(beta), groups)
  return by_platform('lrn_impl', impl, make, x)


def _channel_window_sum(v, size, groups, transpose=False):
  """Sums v [..., channels] over windows of ``size`` channels within each group.

  Window i is channels i - size // 2 .. i + (size - 1 - size // 2), clipped at the group's
  ends; ``transpose`` gives the transposed (mirrored) window, which the gradient needs.
  """
  c = v.shape[-1] // groups
  vg = v.reshape(v.shape[:-1] + (groups, c))
  before, after = size // 2, size - 1 - size // 2
  if transpose:
    before, after = after, before
  w = lax.reduce_window(vg, 0.0, lax.add, (1,) * (vg.ndim - 1) + (size,), (1,) * vg.ndim,
                        [(0, 0)] * (vg.ndim - 1) + [(before, after)])
  return w.reshape(v.shape)


def _power(s, beta):
  """s ** beta; the paper's beta = 0.75 as sqrt(s) * sqrt(sqrt(s)), cheaper than pow."""
  if beta == 0.75:
    r = jnp.sqrt(s)
    return r * jnp.sqrt(r)
  return s ** beta


def _lrn_denominator(x, size, k, alpha, beta, groups):
  """(s, s ** beta) in float32, s = k + alpha / size * window sum of x^2."""
  xf = x.astype(jnp.float32)
  s = k + (alpha / size) * _channel_window_sum(xf * xf, size, groups)
  return s, _power(s, beta)


def _lrn_formula(x, size, k, alpha, beta, groups):
  # A division, not a multiplication by s ** -beta: XLA:CPU then materialises the output
  # instead of recomputing it inside each consumer (the pool and its four users).
  _, d = _lrn_denominator(x, size, k, alpha, beta, groups)
  return (x.astype(jnp.float32) / d).astype(x.dtype)


# The same values; the gradient below.
_lrn = jax.custom_vjp(_lrn_formula, nondiff_argnums=(1, 2, 3, 4, 5))


def _lrn_fwd(x, size, k, alpha, beta, groups):
  return _lrn(x, size, k, alpha, beta, groups), x  # s is recomputed: less memory.


def _lrn_bwd(size, k, alpha, beta, groups, x, g):
  # With d = s ** beta: dx_j = g_j / d_j
  #   - 2 alpha beta / size * x_j * sum_{i: j in window(i)} g_i x_i / (d_i s_i).
  s, d = _lrn_denominator(x, size, k, alpha, beta, groups)
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  t = _channel_window_sum(gf * xf / (d * s), size, groups, transpose=True)
  return ((gf / d - (2.0 * alpha * beta / size) * xf * t).astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def _pool_windows(x, window, stride):
  """The window * window strided slices of x [b, h, w, c] whose max is the 'VALID' pool."""
  b, h, w, c = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  for i in range(window):
    for j in range(window):
      yield i, j, lax.slice(x, (0, i, j, 0),
                            (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                            (1, stride, stride, 1))


def max_pool(x, window, stride, impl='custom'):
  """'VALID' max pooling of x [b, h, w, c] -> [b, (h - window) // stride + 1, ..., c].

  impl 'xla': flax's ``nn.max_pool`` (reduce_window, differentiated into
  select_and_scatter_add). 'custom': the same values and gradient (the first maximum of
  each window, row-major, takes it, as in PyTorch), the gradient built from slices and
  pads, which XLA:CPU runs faster (benchmarks/NOTES.md, item 2); reverse mode only.
  'auto': ``by_platform``.
  """
  def make(impl):
    if impl == 'xla':
      return lambda x: nn.max_pool(x, (window, window), (stride, stride), 'VALID')
    return lambda x: _max_pool(x, window, stride)
  return by_platform('pool_impl', impl, make, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
  # XLA's reduce_window, which XLA materialises once rather than recomputing it inside
  # each consumer (benchmarks/NOTES.md, item 13).
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), 'VALID')


def _max_pool_fwd(x, window, stride):
  out = _max_pool(x, window, stride)
  return out, (x, out)


def _max_pool_bwd(window, stride, res, g):
  x, out = res
  b, h, w, c = x.shape
  ho, wo = out.shape[1:3]
  # Which tap of its window (row-major) each output's first maximum came from.
  taps = list(_pool_windows(x, window, stride))
  first = jnp.full(out.shape, len(taps) - 1, jnp.int32)
  for k in range(len(taps) - 2, -1, -1):
    first = jnp.where(taps[k][2] == out, k, first)
  # Tap (i, j) of output (p, q) is input (stride p + i, stride q + j). Split i = stride a
  # + r: the inputs of row phase r are an output-grid sum of shifted taps, so the scatter
  # is a few shifts on the small grid and one interleave of the stride x stride phases.
  n = -(-window // stride)  # Taps per phase along an axis.
  zero = jnp.zeros((), g.dtype)
  rows = []
  for r in range(stride):
    cols = []
    for q in range(stride):
      phase = jnp.zeros((b, ho + n - 1, wo + n - 1, c), g.dtype)
      for k, (i, j, _) in enumerate(taps):
        if i % stride == r and j % stride == q:
          a, e = i // stride, j // stride
          phase = phase + lax.pad(jnp.where(first == k, g, zero), zero,
                                  ((0, 0, 0), (a, n - 1 - a, 0), (e, n - 1 - e, 0),
                                   (0, 0, 0)))
      cols.append(phase)
    rows.append(jnp.stack(cols, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(b, (ho + n - 1) * stride, (wo + n - 1) * stride, c)
  # Rows and columns past the last window are zero: trim or pad to the input's size.
  dx = lax.pad(dx, zero, ((0, 0, 0), (0, h - dx.shape[1], 0), (0, w - dx.shape[2], 0),
                          (0, 0, 0)))
  return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def spatial_norm(x, *, size=5, scale=4e-5, power=0.75):
  """The original code's normalisation after LRN2, absent from the paper.

  y = x * (1 + scale * sum_{size x size window, same channel} x^2) ** -power, with the
  window clipped at the image border (layers-145.cfg; scale is already divided by the
  window's area). x: [batch, height, width, channels].
  """
  sq = jnp.square(x.astype(jnp.float32))
  window = lax.reduce_window(sq, 0.0, lax.add, (1, size, size, 1), (1, 1, 1, 1), 'SAME')
  return (x * (1.0 + scale * window) ** -power).astype(x.dtype)


def initializers(scheme, layer, bias=1.0):
  """(kernel_init, bias_init) for ``layer`` under an initialisation scheme.

  'paper': weights N(0, 0.01); biases ``bias`` (the paper: 1) in conv2, conv4, conv5, fc6,
    fc7, else 0 (Section 5). 'original_code': the same but conv3-conv5 weights N(0, 0.03)
    (layer-params-145.cfg). 'bvlc': Caffe's replication (train_val.prototxt): the same but
    fc6 and fc7 weights N(0, 0.005), used with ``bias`` 0.1. 'he': He-normal weights, zero
    biases, for modern training (with inputs divided by the pixels' standard deviation:
    config.data.std, preset 'he').
  """
  if scheme == 'he':
    return nn.initializers.he_normal(), nn.initializers.zeros
  std = 0.01
  if scheme == 'original_code' and layer in ('conv3', 'conv4', 'conv5'):
    std = 0.03
  if scheme == 'bvlc' and layer in ('fc6', 'fc7'):
    std = 0.005
  value = bias if layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0
  return nn.initializers.normal(std), nn.initializers.constant(value)


_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, kernel, stride, padding, **kwargs):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=_DIMENSIONS, **kwargs)


class Conv(nn.Module):
  """NHWC convolution over ``groups`` independent channel groups (the columns).

  kernel: [kernel_size, kernel_size, in_channels // groups, features]; bias: [features].
  Group g reads input channels g*C/G:(g+1)*C/G and writes output channels
  g*F/G:(g+1)*F/G, as ``feature_group_count`` defines.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: Any = 'SAME'
  groups: int = 1
  group_impl: str = 'split'  # Or 'feature_group', or 'auto' (by platform).
  kernel_init: Any = nn.initializers.normal(0.01)
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1] // self.groups, self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    conv = functools.partial(_conv, stride=self.strides, padding=self.padding)
    if self.groups == 1:
      y = conv(x, kernel)
    else:
      y = by_platform('group_impl', self.group_impl, self._grouped(conv), x, kernel)
    return y + bias.astype(self.dtype)

  def _grouped(self, conv):
    def make(impl):
      if impl == 'feature_group':
        return lambda x, kernel: conv(x, kernel, feature_group_count=self.groups)
      return lambda x, kernel: jnp.concatenate([conv(xi, ki) for xi, ki in zip(
          jnp.split(x, self.groups, axis=-1), jnp.split(kernel, self.groups, axis=-1))],
                                               axis=-1)  # 'split'
    return make


def axis_size(axis_name):
  """Size of a mesh axis inside shard_map; 1 when ``axis_name`` is None."""
  return 1 if axis_name is None else lax.psum(1, axis_name)


class AlexNet(nn.Module):
  """The paper's network; every switch a field, set from ``config.model``.

  Call: ``model.apply(variables, images, train=False)`` with images
  [batch, 224, 224, 3] (227 x 227 when ``conv1_padding='valid'``), already normalised;
  returns float32 logits [batch, num_classes], or with ``return_features=True`` a dict
  {layer: activation} over ``LAYERS`` (after the activation, less a removed layer; under
  ``model_axis`` the conv and fc activations are the local column's). ``train=True``
  needs a ``'dropout'`` rng.

  Shapes (224 input, both columns): conv1 [b, 55, 55, 96] -> pool1 [b, 27, 27, 96] ->
  conv2 [b, 27, 27, 256] -> pool2 [b, 13, 13, 256] -> conv3 [b, 13, 13, 384] ->
  conv4 [b, 13, 13, 384] -> conv5 [b, 13, 13, 256] -> pool5 [b, 6, 6, 256] ->
  fc6 [b, 4096] -> fc7 [b, 4096] -> logits [b, num_classes]. Pooling 2/2 instead of 3/2
  gives the same sizes.
  """
  num_classes: int = 1000
  columns: int = 2  # 2: the paper's two-column net; 1: same widths, no column split.
  lrn: bool = True
  lrn_size: int = 5
  lrn_k: float = 2.0
  lrn_alpha: float = 1e-4  # Divided by lrn_size: alpha' = 2e-5, as the original code.
  lrn_beta: float = 0.75
  pool_window: int = 3  # 3/2: overlapping (paper Section 3.4); 2/2: non-overlapping.
  pool_stride: int = 2
  dropout_rate: float = 0.5
  # conv1-conv5, fc6, fc7, both columns together; the paper's one-column comparison net
  # (layers-145-half) is (48, 128, 192, 192, 256, 4096, 4096) with columns=1.
  widths: tuple[int, ...] = WIDTHS
  activation: str = 'relu'  # 'tanh': every ReLU replaced (Section 3.1, Figure 1).
  removed_layer: str = ''  # One of REMOVABLE: the net without it (Section 7); '' = none.
  init_scheme: str = 'paper'
  init_bias: float = 1.0  # Biases of conv2, conv4, conv5, fc6, fc7 at init (BVLC: 0.1).
  lrn1_before_relu: bool = False  # Original code: LRN1 normalises conv1's pre-activation.
  spatial_norm: bool = False  # Original code: a 5x5 same-channel norm after LRN2.
  conv1_padding: str = 'paper'  # 'paper': 224 input padded (0, 3); 'valid': 227, Caffe.
  # True: the LRN window runs over all channels of the layer, across the two columns, as
  # Caffe's bvlc_alexnet; False: inside each column, as the original code.
  lrn_across_columns: bool = False
  # How LRN, max pooling and the column-local convolutions are computed (module
  # docstring); 'auto': by the platform lowered for, `by_platform`.
  lrn_impl: str = 'auto'
  pool_impl: str = 'auto'
  group_impl: str = 'auto'
  dtype: str = 'float32'  # Compute dtype; parameters are always float32.
  # Set by the model-parallel step, never by configs: the shard_map axes this call runs
  # under. Parameters then hold the local column(s), dropout masks the local shard's.
  model_axis: str | None = None
  data_axis: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool, return_features: bool = False):
    # Fields as alexnet_jax.checks.validate admits them; a mesh axis of 1 or `columns`.
    shards = axis_size(self.model_axis)
    groups = self.columns // shards  # Columns computed on this device.
    dtype = jnp.dtype(self.dtype)
    pad1 = {'paper': ((0, 3), (0, 3)), 'valid': 'VALID'}[self.conv1_padding]
    width = dict(zip(WIDTH_LAYERS, self.widths))
    act = {'relu': nn.relu, 'tanh': jnp.tanh}[self.activation]

    def conv(name, x, kernel_size, stride=1, padding='SAME', groups=1):
      kernel_init, bias_init = initializers(self.init_scheme, name, self.init_bias)
      return Conv(width[name] // shards, kernel_size, stride, padding, groups,
                  self.group_impl, kernel_init, bias_init, dtype, name=name)(x)

    def dense(name, x, features):
      kernel_init, bias_init = initializers(self.init_scheme, name, self.init_bias)
      return nn.Dense(features // shards, kernel_init=kernel_init, bias_init=bias_init,
                      dtype=dtype, param_dtype=jnp.float32, name=name)(x)

    def both_columns(x):
      """[..., local channels] -> [..., all channels], for the layers that cross."""
      if self.model_axis is None:
        return x
      return lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True)

    def lrn(x):
      if not self.lrn:
        return x
      norm = functools.partial(local_response_norm, size=self.lrn_size, k=self.lrn_k,
                               alpha=self.lrn_alpha, beta=self.lrn_beta,
                               impl=self.lrn_impl)
      if not self.lrn_across_columns:
        return norm(x, groups=groups)
      if shards == 1:
        return norm(x)
      # The windows at a column's edge reach into the other device's channels: normalise
      # all channels (gathered) and keep this device's. Costs a gather of conv1's and
      # conv2's maps and twice the LRN arithmetic; only the Caffe network does it.
      c = x.shape[-1]
      return lax.dynamic_slice_in_dim(norm(both_columns(x)),
                                      lax.axis_index(self.model_axis) * c, c, axis=x.ndim - 1)

    def pool(x):
      return max_pool(x, self.pool_window, self.pool_stride, self.pool_impl)

    feats = {}
    x = x.astype(dtype)
    x = conv('conv1', x, 11, 4, pad1)
    feats['conv1'] = act(x)
    x = act(lrn(x)) if self.lrn1_before_relu else lrn(act(x))
    x = pool(x)
    x = act(conv('conv2', x, 5, groups=groups))
    feats['conv2'] = x
    x = lrn(x)
    if self.spatial_norm:
      x = spatial_norm(x)
    x = pool(x)
    # conv3 reads both columns; conv4 and conv5 their own. Without conv3 no conv crosses.
    for name, cross in (('conv3', True), ('conv4', False), ('conv5', False)):
      if name != self.removed_layer:
        x = act(conv(name, both_columns(x), 3) if cross else
                conv(name, x, 3, groups=groups))
        feats[name] = x
    x = pool(x)
    feats['pool5'] = x
    x = both_columns(x).reshape(x.shape[0], -1)
    x = act(dense('fc6', x, width['fc6']))
    feats['fc6'] = x
    x = self.dropout(x, train)
    x = act(dense('fc7', both_columns(x), width['fc7']))
    feats['fc7'] = x
    x = self.dropout(x, train)
    x = both_columns(dense('fc8', both_columns(x), self.num_classes)).astype(jnp.float32)
    feats['logits'] = x
    return feats if return_features else x

  def dropout(self, x, train):
    """Inverted dropout on x [batch, units]; each device draws the mask of its shard only.

    The mask of one example and one column is drawn from the 'dropout' key folded with
    the example's row in the global batch and the column's index: units / columns
    Bernoulli draws (2048 for fc6 and fc7). A device holding rows data_index * b ...
    and columns model_index * c ... draws b x c of these blocks, b x units bits: its
    share of the batch and of the units (at data=64 a 64th of the global mask, not all
    of it). The mask of each (example, column) depends only on the key and those two
    indices, never on the mesh, so a model=2 or data=2 run equals the one-device run
    (tests/test_train.py). (The original code scales by 0.5 at test time instead; equal
    in expectation.)
    """
    if not train or self.dropout_rate == 0.0:
      return x
    b, u = x.shape
    groups = self.columns // axis_size(self.model_axis)  # Columns on this device.
    row0 = 0 if self.data_axis is None else lax.axis_index(self.data_axis) * b
    col0 = 0 if self.model_axis is None else lax.axis_index(self.model_axis) * groups
    key = self.make_rng('dropout')

    def block(row, col):  # [units // groups]: one example's units of one column.
      k = jax.random.fold_in(jax.random.fold_in(key, row), col)
      return jax.random.bernoulli(k, 1.0 - self.dropout_rate, (u // groups,))

    keep = jax.vmap(jax.vmap(block, (None, 0)), (0, None))(
        row0 + jnp.arange(b), col0 + jnp.arange(groups)).reshape(b, u)
    return jnp.where(keep, x / (1.0 - self.dropout_rate), 0).astype(x.dtype)
