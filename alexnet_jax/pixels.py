"""The device half of preprocessing: `normalize` (in the jitted step), the means it
subtracts, and the constants preprocessing.py and the config checks share. Free of
TensorFlow, so synthetic data and the step run where it is not installed.
"""

import jax.numpy as jnp
import numpy as np

# Per-channel RGB mean in 0-255 (cuda-convnet2 `make-data/input_meta`).
CHANNEL_MEAN = (127.3, 119.7, 104.9)

# PCA of ImageNet's RGB pixels in 0-255, from the original code (convdata.py, `color_pca`;
# docs/reference.md, "Data"). PCA_STDDEVS[i], smallest first, is the standard deviation
# along PCA_EIGVECS[:, i]: the eigenvectors are COLUMNS here, the transpose of the matrix
# printed in docs/reference.md, whose rows pair with the stddevs. Read this way the largest
# component is the brightness axis (tests/test_preprocessing.py checks both readings).
PCA_STDDEVS = (19.72, 37.09, 121.78)
PCA_EIGVECS = ((0.418, -0.713, -0.564),
               (-0.817, -0.024, -0.576),
               (0.397, 0.701, -0.592))

# The ten test views (Section 4.1), in the original code's order (convdata.py,
# CroppedImageNetDP.__trim_borders): these five, then the same five mirrored left-right.
VIEWS = ('top_left', 'top_right', 'center', 'bottom_left', 'bottom_right')

# How the stored image is made from a photograph (data_source.resize_mode): the shorter side
# resized and the centre cropped (the paper), or the whole image warped (Caffe's).
RESIZE_MODES = ('shorter', 'warp')

CHANNEL_ORDERS = ('rgb', 'bgr')


def normalize(images, lighting=None, mean=CHANNEL_MEAN, dtype=jnp.float32, std=1.0,
              channel_order='rgb'):
  """(images + lighting - mean) / std, on the device; RGB in, channel_order out.

  std 1 keeps 0-255 units, as the paper (Section 2); He initialisation wants the pixels'
  std (config.data.std). channel_order='bgr' reverses the result's channels (Caffe's).

  Args:
    images: uint8 [b, ..., h, w, 3], e.g. [b, h, w, 3] or [b, 10, h, w, 3] for eval views.
    lighting: float32 [b, 3] per-image RGB offsets (pca_lighting), or None.
    mean: [3] per-channel mean, or [h, w, 3] mean image (mean_for_crop).
    dtype: of the result.
    std: divides the result (scalar or [3]); 1 in the paper.
    channel_order: 'rgb' or 'bgr', the order of the result's channels.
  Returns:
    dtype [b, ..., h, w, 3].
  """
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f'channel_order={channel_order!r}: use one of {CHANNEL_ORDERS}.')
  x = images.astype(jnp.float32)
  if lighting is not None:
    lighting = jnp.asarray(lighting, jnp.float32)
    x = x + lighting.reshape(lighting.shape[:1] + (1,) * (x.ndim - 2) + (3,))
  x = x - jnp.asarray(mean, jnp.float32)
  if std != 1.0:
    x = x / jnp.asarray(std, jnp.float32)
  if channel_order == 'bgr':
    x = x[..., ::-1]
  return x.astype(dtype)


def mean_image(images):
  """The mean image over a split (Section 2), accumulated in float64: an iterable of
  uint8 [h, w, 3] or [b, h, w, 3] (the stored images) -> float32 [h, w, 3]."""
  total, count = None, 0
  for x in images:
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[None]
    if total is None:
      total = np.zeros(x.shape[1:], np.float64)
    if x.shape[1:] != total.shape:
      raise ValueError(f'mean_image needs images of one shape; got {x.shape[1:]} after '
                       f'{total.shape}: resize_shorter_and_center_crop them first.')
    total += x.sum(axis=0, dtype=np.float64)
    count += x.shape[0]
  if not count:
    raise ValueError('mean_image got no images.')
  return (total / count).astype(np.float32)


def mean_for_crop(mean, size):
  """The centre of a mean image [h, w, 3] -> [size, size, 3], same type: what the original
  code subtracts from every crop (convdata.py, `data_mean_crop`)."""
  h, w = mean.shape[:2]
  if min(h, w) < size:
    raise ValueError(f'mean image {h}x{w} is smaller than the {size}x{size} crop.')
  top, left = (h - size) // 2, (w - size) // 2
  return mean[top:top + size, left:left + size]
