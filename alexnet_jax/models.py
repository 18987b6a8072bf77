"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) as one Flax Linen module.

The paper's network is two columns, one per GPU (Section 3.2, Figure 2). Every layer's
channels are split in two halves; conv2, conv4 and conv5 read only their own column's
maps, conv3 and fc6-fc8 read both.

One parameter layout serves every way of running the network. The last axis of every
kernel and bias (output channels or units) is [column 0 | column 1]; the kernels of the
column-local layers hold the input channels of one column, as a grouped convolution's do
(conv2: [5, 5, 48, 256]). So:

* On one device (``model_axis=None``) both columns are computed locally. The column-local
  layers run as two convolutions over the channel halves (``group_impl='split'``; XLA:CPU
  is slow with ``feature_group_count=2``, see ../shared/reference/performance.md) or as one
  grouped convolution (``group_impl='feature_group'``).
* Inside ``jax.shard_map`` over a mesh axis of size 2 (``model_axis='model'``), every
  parameter is sharded on its last axis, so each device holds one column, exactly as the
  paper's two GPUs did. Column-local layers need no communication; the layers that cross
  columns all-gather their input along channels first.

Named activations (``LAYERS``) come from the same definition, for feature extraction:
``model.apply(variables, x, train=False, return_features=True)`` returns a dict of them.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Activations that can be read out (post-ReLU for conv and fc layers).
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5', 'fc6', 'fc7', 'logits')

# Output channels (or units) of each layer, both columns together (paper Section 3.5).
WIDTHS = {'conv1': 96, 'conv2': 256, 'conv3': 384, 'conv4': 384, 'conv5': 256,
          'fc6': 4096, 'fc7': 4096}

INITS = ('paper', 'original_code', 'he')


def local_response_norm(x, *, size=5, k=2.0, alpha=1e-4, beta=0.75, groups=1):
  """Local response normalisation across channels (paper Section 3.3).

  y_i = x_i * (k + alpha / size * sum_{j in window(i)} x_j^2) ** -beta, the window of
  ``size`` channels centred on i and clipped at the ends of the channel axis. ``alpha`` is
  in the original code's, Caffe's and PyTorch's convention (divided by ``size``); the
  paper's text read literally is ``alpha = 5e-4`` for size 5.

  Args:
    x: [..., channels].
    groups: the channel axis is split into this many equal groups (the columns) and the
      window never crosses a group's ends, as in the original code.
  Returns:
    Same shape and dtype as x; the normaliser is computed in float32.
  """
  c = x.shape[-1] // groups
  xg = x.reshape(x.shape[:-1] + (groups, c))
  sq = jnp.square(xg.astype(jnp.float32))
  before = size // 2
  sq = jnp.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(before, size - 1 - before)])
  window = sum(sq[..., i:i + c] for i in range(size))
  y = xg * (k + (alpha / size) * window) ** -beta
  return y.reshape(x.shape).astype(x.dtype)


def spatial_norm(x, *, size=5, scale=4e-5, power=0.75):
  """The original code's normalisation after LRN2, absent from the paper.

  y = x * (1 + scale * sum_{size x size window, same channel} x^2) ** -power, with the
  window clipped at the image border (layers-145.cfg; scale is already divided by the
  window's area). x: [batch, height, width, channels].
  """
  sq = jnp.square(x.astype(jnp.float32))
  window = lax.reduce_window(sq, 0.0, lax.add, (1, size, size, 1), (1, 1, 1, 1), 'SAME')
  return (x * (1.0 + scale * window) ** -power).astype(x.dtype)


def initializers(scheme, layer):
  """(kernel_init, bias_init) for ``layer`` under an initialisation scheme.

  'paper': weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0
    (Section 5). 'original_code': the same but conv3-conv5 weights N(0, 0.03)
    (layer-params-145.cfg). 'he': He-normal weights, zero biases, for modern training.
  """
  if scheme not in INITS:
    raise ValueError(f'model.init_scheme={scheme!r}: choose one of {INITS}.')
  if scheme == 'he':
    return nn.initializers.he_normal(), nn.initializers.zeros
  std = 0.03 if scheme == 'original_code' and layer in ('conv3', 'conv4', 'conv5') else 0.01
  bias = 1.0 if layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0
  return nn.initializers.normal(std), nn.initializers.constant(bias)


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
  group_impl: str = 'split'
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
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=(self.strides, self.strides),
        padding=self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.groups == 1:
      y = conv(x, kernel)
    elif self.group_impl == 'feature_group':
      y = conv(x, kernel, feature_group_count=self.groups)
    elif self.group_impl == 'split':
      y = jnp.concatenate([conv(xi, ki) for xi, ki in zip(
          jnp.split(x, self.groups, axis=-1), jnp.split(kernel, self.groups, axis=-1))],
                          axis=-1)
    else:
      raise ValueError(f"model.group_impl={self.group_impl!r}: use 'split' or "
                       "'feature_group'.")
    return y + bias.astype(self.dtype)


def axis_size(axis_name):
  """Size of a mesh axis inside shard_map; 1 when ``axis_name`` is None."""
  return 1 if axis_name is None else lax.psum(1, axis_name)


class AlexNet(nn.Module):
  """The paper's network; every switch a field, set from ``config.model``.

  Call: ``model.apply(variables, images, train=False)`` with images
  [batch, 224, 224, 3] (227 x 227 when ``conv1_padding='valid'``), already normalised;
  returns float32 logits [batch, num_classes], or with ``return_features=True`` a dict
  {layer: activation} over ``LAYERS`` (post-ReLU; under ``model_axis`` the conv and fc
  activations are the local column's). ``train=True`` needs a ``'dropout'`` rng.

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
  init_scheme: str = 'paper'
  lrn1_before_relu: bool = False  # Original code: LRN1 normalises conv1's pre-activation.
  spatial_norm: bool = False  # Original code: a 5x5 same-channel norm after LRN2.
  conv1_padding: str = 'paper'  # 'paper': 224 input padded (0, 3); 'valid': 227, Caffe.
  group_impl: str = 'split'
  dtype: str = 'float32'  # Compute dtype; parameters are always float32.
  # Set by the model-parallel step, never by configs: the shard_map axes this call runs
  # under. Parameters then hold the local column(s) and dropout masks are the global ones.
  model_axis: str | None = None
  data_axis: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool, return_features: bool = False):
    if self.columns not in (1, 2):
      raise ValueError(f'model.columns={self.columns}: the network has 1 or 2 columns.')
    shards = axis_size(self.model_axis)
    if shards not in (1, self.columns):
      raise ValueError(f'The model axis has size {shards} but the network has '
                       f'{self.columns} column(s): use a mesh with model=1 or model='
                       f'{self.columns}.')
    if self.num_classes % shards:
      raise ValueError(f'model.num_classes={self.num_classes} must be divisible by the '
                       f'model axis size {shards}.')
    groups = self.columns // shards  # Columns computed on this device.
    dtype = jnp.dtype(self.dtype)
    pad1 = {'paper': ((0, 3), (0, 3)), 'valid': 'VALID'}.get(self.conv1_padding)
    if pad1 is None:
      raise ValueError(f"model.conv1_padding={self.conv1_padding!r}: use 'paper' (224 "
                       "input) or 'valid' (227 input).")

    def conv(name, x, kernel_size, stride=1, padding='SAME', groups=1):
      kernel_init, bias_init = initializers(self.init_scheme, name)
      return Conv(WIDTHS[name] // shards, kernel_size, stride, padding, groups,
                  self.group_impl, kernel_init, bias_init, dtype, name=name)(x)

    def dense(name, x, features):
      kernel_init, bias_init = initializers(self.init_scheme, name)
      return nn.Dense(features // shards, kernel_init=kernel_init, bias_init=bias_init,
                      dtype=dtype, param_dtype=jnp.float32, name=name)(x)

    def lrn(x):
      if not self.lrn:
        return x
      return local_response_norm(x, size=self.lrn_size, k=self.lrn_k,
                                 alpha=self.lrn_alpha, beta=self.lrn_beta, groups=groups)

    def pool(x):
      return nn.max_pool(x, (self.pool_window,) * 2, (self.pool_stride,) * 2, 'VALID')

    def both_columns(x):
      """[..., local channels] -> [..., all channels], for the layers that cross."""
      if self.model_axis is None:
        return x
      return lax.all_gather(x, self.model_axis, axis=x.ndim - 1, tiled=True)

    feats = {}
    x = x.astype(dtype)
    x = conv('conv1', x, 11, 4, pad1)
    feats['conv1'] = nn.relu(x)
    x = nn.relu(lrn(x)) if self.lrn1_before_relu else lrn(nn.relu(x))
    x = pool(x)
    x = nn.relu(conv('conv2', x, 5, groups=groups))
    feats['conv2'] = x
    x = lrn(x)
    if self.spatial_norm:
      x = spatial_norm(x)
    x = pool(x)
    x = nn.relu(conv('conv3', both_columns(x), 3))
    feats['conv3'] = x
    x = nn.relu(conv('conv4', x, 3, groups=groups))
    feats['conv4'] = x
    x = nn.relu(conv('conv5', x, 3, groups=groups))
    feats['conv5'] = x
    x = pool(x)
    feats['pool5'] = x
    x = both_columns(x).reshape(x.shape[0], -1)
    x = nn.relu(dense('fc6', x, WIDTHS['fc6']))
    feats['fc6'] = x
    x = self.dropout(x, train)
    x = nn.relu(dense('fc7', both_columns(x), WIDTHS['fc7']))
    feats['fc7'] = x
    x = self.dropout(x, train)
    x = both_columns(dense('fc8', both_columns(x), self.num_classes)).astype(jnp.float32)
    feats['logits'] = x
    return feats if return_features else x

  def dropout(self, x, train):
    """Inverted dropout on [batch, units] with the mask of the whole global batch.

    The mask is drawn for the global [batch, units] block from the one 'dropout' key and
    each device keeps its own slice, so masks differ per device and per step yet are the
    same whatever the mesh: a model=2 or data=2 run equals the one-device run.
    (The original code scales by 0.5 at test time instead; equal in expectation.)
    """
    if not train or self.dropout_rate == 0.0:
      return x
    rows, cols = axis_size(self.data_axis), axis_size(self.model_axis)
    b, u = x.shape
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout_rate,
                                (b * rows, u * cols))
    if rows * cols > 1:
      row = 0 if self.data_axis is None else lax.axis_index(self.data_axis)
      col = 0 if self.model_axis is None else lax.axis_index(self.model_axis)
      keep = lax.dynamic_slice(keep, (row * b, col * u), (b, u))
    return jnp.where(keep, x / (1.0 - self.dropout_rate), 0).astype(x.dtype)
