"""Caffe's bvlc_alexnet in PyTorch: the oracle for alexnet_jax.convert and the 'caffe' preset.

Written from Caffe's definition of the network (models/bvlc_alexnet/deploy.prototxt,
caffe.proto; docs/weights.md), not from models.py or convert.py: NCHW input,
BGR, 227 x 227; conv1 11/4 without padding; conv2, conv4, conv5 with groups=2; LRN over
all the channels of the layer (across the groups) with local_size 5, alpha 1e-4 divided by
the size, beta 0.75 and k = 1, which is `nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)`; max
pooling 3/2; fc6 reading pool5 flattened in (C, H, W) order; dropout the identity at test.
Its parameters are in Caffe's own layouts (weights [out, in / group, h, w], fully
connected [out, in]), so Caffe's blobs load as they are stored:

  net = caffe_alexnet.CaffeAlexNet().eval()
  caffe_alexnet.load_blobs(net, {'conv1': [w, b], ...})
  logits = net(bgr_nchw_minus_mean)
"""

import torch
import torch.nn.functional as F
from torch import nn

# bvlc_alexnet's parameterised layers and their weight shapes, Caffe's layout.
SHAPES = {'conv1': (96, 3, 11, 11), 'conv2': (256, 48, 5, 5), 'conv3': (384, 256, 3, 3),
          'conv4': (384, 192, 3, 3), 'conv5': (256, 192, 3, 3), 'fc6': (4096, 9216),
          'fc7': (4096, 4096), 'fc8': (1000, 4096)}


class CaffeAlexNet(nn.Module):
  """deploy.prototxt's network: forward(x [b, 3, 227, 227] BGR minus mean) -> fc8 [b, 1000]."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
    self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
    self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
    self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
    self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
    self.fc6 = nn.Linear(9216, 4096)
    self.fc7 = nn.Linear(4096, 4096)
    self.fc8 = nn.Linear(4096, 1000)
    self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

  def forward(self, x):
    x = F.max_pool2d(self.norm(F.relu(self.conv1(x))), 3, 2)  # conv1 relu1 norm1 pool1
    x = F.max_pool2d(self.norm(F.relu(self.conv2(x))), 3, 2)  # conv2 relu2 norm2 pool2
    x = F.relu(self.conv3(x))
    x = F.relu(self.conv4(x))
    x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
    x = F.relu(self.fc6(torch.flatten(x, 1)))  # (C, H, W) order, as Caffe's InnerProduct.
    x = F.relu(self.fc7(x))
    return self.fc8(x)


def load_blobs(net, blobs):
  """Sets the parameters from {layer: [weights, bias]} NumPy arrays in Caffe's layout."""
  state = {}
  for name, (w, b) in blobs.items():
    state[f'{name}.weight'] = torch.from_numpy(w.reshape(SHAPES[name]).copy())
    state[f'{name}.bias'] = torch.from_numpy(b.reshape(-1).copy())
  net.load_state_dict(state)
  return net
