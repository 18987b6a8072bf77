"""An independent PyTorch AlexNet: the oracle for alexnet_jax.models and the PyTorch peer.

Written from the paper and docs/reference.md, not from models.py: NCHW,
``nn.Conv2d(groups=2)`` for the column-local layers (conv2, conv4, conv5),
``nn.LocalResponseNorm`` applied to each column's channels separately (or to all of
them, ``lrn_across_columns``, as Caffe's bvlc_alexnet), conv1's (0, 3)
padding by ``F.pad``. ``flax_to_torch`` is the one place that converts our Flax
parameters (HWIO kernels, Dense [in, out], fc6 rows in NHWC (h, w, c) flatten order)
into this module's state_dict (OIHW, Linear [out, in], fc6 columns in (c, h, w) order).

  model = torch_alexnet.AlexNet(**torch_alexnet.kwargs_from_config(cfg.model))
  model.load_state_dict(torch_alexnet.flax_to_torch(variables['params']))
  logits = model.eval()(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Fields of models.AlexNet that this module implements; the rest (lrn_impl, pool_impl,
# group_impl, dtype, model_axis, data_axis) are about how JAX runs the network, not what
# it computes.
FIELDS = ('num_classes', 'columns', 'lrn', 'lrn_size', 'lrn_k', 'lrn_alpha', 'lrn_beta',
          'pool_window', 'pool_stride', 'dropout_rate', 'init_scheme', 'lrn1_before_relu',
          'spatial_norm', 'conv1_padding', 'lrn_across_columns', 'widths', 'activation',
          'removed_layer')

CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
DENSES = ('fc6', 'fc7', 'fc8')


def kwargs_from_config(model_config):
  """The constructor arguments of ``AlexNet`` from a ``config.model`` ConfigDict."""
  return {name: model_config[name] for name in FIELDS if name in model_config}


class ColumnLRN(nn.Module):
  """``nn.LocalResponseNorm`` on each column's half of the channels separately."""

  def __init__(self, columns, size, alpha, beta, k):
    super().__init__()
    self.columns = columns
    self.norm = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)

  def forward(self, x):
    return torch.cat([self.norm(xc) for xc in x.chunk(self.columns, dim=1)], dim=1)


def spatial_norm(x, size=5, scale=4e-5, power=0.75):
  """y = x (1 + scale * sum of x^2 over a size x size same-channel window)^-power.

  The window is clipped at the border: zero padding, and avg_pool2d counts the padded
  cells, so avg * size^2 is the sum over the pixels inside the image. x: [b, c, h, w].
  """
  window = F.avg_pool2d(x * x, size, stride=1, padding=size // 2,
                        count_include_pad=True) * size * size
  return x * (1.0 + scale * window) ** -power


class AlexNet(nn.Module):
  """The paper's network in PyTorch; images [batch, 3, 224, 224] (227 with 'valid').

  forward returns logits [batch, num_classes]; ``features(x)`` returns the named
  activations (post-ReLU, NCHW for convs) of models.LAYERS.
  """

  def __init__(self, num_classes=1000, columns=2, lrn=True, lrn_size=5, lrn_k=2.0,
               lrn_alpha=1e-4, lrn_beta=0.75, pool_window=3, pool_stride=2,
               dropout_rate=0.5, init_scheme='paper', lrn1_before_relu=False,
               spatial_norm=False, conv1_padding='paper', lrn_across_columns=False,
               widths=(96, 256, 384, 384, 256, 4096, 4096), activation='relu',
               removed_layer=''):
    super().__init__()
    if columns not in (1, 2):
      raise ValueError(f'columns={columns}: the network has 1 or 2 columns.')
    if conv1_padding not in ('paper', 'valid'):
      raise ValueError(f"conv1_padding={conv1_padding!r}: use 'paper' or 'valid'.")
    self.columns = columns
    self.lrn1_before_relu = lrn1_before_relu
    self.use_spatial_norm = spatial_norm
    self.conv1_padding = conv1_padding
    g = columns
    c1, c2, c3, c4, c5, f6, f7 = widths
    self.act = {'relu': F.relu, 'tanh': torch.tanh}[activation]
    self.convs = tuple(n for n in CONVS if n != removed_layer)
    self.conv1 = nn.Conv2d(3, c1, 11, stride=4)
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=g)
    cin = c2
    for name, cout, groups in (('conv3', c3, 1), ('conv4', c4, g), ('conv5', c5, g)):
      if name in self.convs:
        setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1, groups=groups))
        cin = cout
    self.fc6 = nn.Linear(cin * 6 * 6, f6)
    self.fc7 = nn.Linear(f6, f7)
    self.fc8 = nn.Linear(f7, num_classes)
    self.lrn = (ColumnLRN(1 if lrn_across_columns else columns, lrn_size, lrn_alpha,
                          lrn_beta, lrn_k) if lrn else nn.Identity())
    self.pool = nn.MaxPool2d(pool_window, pool_stride)
    self.dropout = nn.Dropout(dropout_rate)
    self.reset_parameters(init_scheme)

  @torch.no_grad()
  def reset_parameters(self, init_scheme='paper'):
    """The paper's (Section 5), the original code's or He initialisation."""
    for name in self.convs + DENSES:
      layer = getattr(self, name)
      if init_scheme == 'he':
        nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')
        nn.init.zeros_(layer.bias)
      elif init_scheme in ('paper', 'original_code'):
        code_std = init_scheme == 'original_code' and name in ('conv3', 'conv4', 'conv5')
        nn.init.normal_(layer.weight, std=0.03 if code_std else 0.01)
        one = name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
        nn.init.constant_(layer.bias, 1.0 if one else 0.0)
      else:
        raise ValueError(f"init_scheme={init_scheme!r}: 'paper', 'original_code' or 'he'.")

  def features(self, x):
    feats = {}
    if self.conv1_padding == 'paper':
      x = F.pad(x, (0, 3, 0, 3))  # (left, right, top, bottom) of the last two axes.
    act = self.act
    x = self.conv1(x)
    feats['conv1'] = act(x)
    x = act(self.lrn(x)) if self.lrn1_before_relu else self.lrn(act(x))
    x = self.pool(x)
    x = feats['conv2'] = act(self.conv2(x))
    x = self.lrn(x)
    if self.use_spatial_norm:
      x = spatial_norm(x)
    x = self.pool(x)
    for name in self.convs[2:]:
      x = feats[name] = act(getattr(self, name)(x))
    x = feats['pool5'] = self.pool(x)
    x = feats['fc6'] = act(self.fc6(torch.flatten(x, 1)))
    x = feats['fc7'] = act(self.fc7(self.dropout(x)))
    feats['logits'] = self.fc8(self.dropout(x))
    return feats

  def forward(self, x):
    return self.features(x)['logits']


def flax_to_torch(params):
  """Our Flax params -> this module's state_dict (float32 torch tensors).

  Conv kernels [kh, kw, in/groups, out] -> [out, in/groups, kh, kw]: both frameworks
  give group g the g-th block of output channels. Dense kernels [in, out] -> [out, in].
  fc6's input is pool5 flattened: ours in (h, w, c) order, torch's in (c, h, w).
  """
  state = {}
  convs = [name for name in CONVS if name in params]
  for name in convs:
    state[f'{name}.weight'] = np.transpose(np.asarray(params[name]['kernel']), (3, 2, 0, 1))
  for name in DENSES:
    state[f'{name}.weight'] = np.asarray(params[name]['kernel']).T
  w6 = np.asarray(params['fc6']['kernel'])  # [h * w * c, units]
  channels = np.asarray(params[convs[-1]]['kernel']).shape[-1]
  side = int(round((w6.shape[0] // channels) ** 0.5))
  w6 = w6.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(w6.shape)
  state['fc6.weight'] = w6.T
  for name in convs + list(DENSES):
    state[f'{name}.bias'] = np.asarray(params[name]['bias'])
  return {k: torch.tensor(np.asarray(v, np.float32)) for k, v in state.items()}
