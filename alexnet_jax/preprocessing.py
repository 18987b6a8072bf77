"""Per-image preprocessing in tf ops for tf.data's map (paper Sections 2 and 4.1).

Images stay uint8 [h, w, 3] RGB until pixels.normalize, on the device in the step, so
batches cross to the device as bytes.

  train: decode_rgb -> resize_shorter_and_center_crop(256) -> random_crop_and_flip(224)
         (or the fused decode_and_random_crop), plus a per-image pca_lighting offset
  eval:  decode_rgb -> resize_shorter_and_center_crop(256) -> ten_views or center_crop

config.data.resize_mode='warp' (Caffe's) uses warp_resize instead of the aspect-keeping
resize. Every random op takes a stateless int [2] seed, so the output is a function of it.
"""

import tensorflow as tf

from alexnet_jax import pixels


def decode_rgb(image_bytes):
  """Decodes a JPEG (RGB, grayscale or CMYK), PNG, GIF, BMP or WebP to three RGB channels.

  EXIF orientation is ignored, as TFDS, PIL and the original code read ImageNet. Bytes
  that are not an image, or a truncated JPEG, raise tf.errors.InvalidArgumentError when
  the op runs; there is no partial image. Scalar tf.string -> uint8 [h, w, 3].
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _shorter_side_shape(height, width, size):
  """(new_height, new_width) int32 with the shorter side `size`, aspect ratio kept."""
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  scale = size / tf.minimum(h, w)
  new_h = tf.cast(tf.round(h * scale), tf.int32)
  new_w = tf.cast(tf.round(w * scale), tf.int32)
  # The shorter side is exactly `size` even where rounding would miss by one.
  return (tf.where(height <= width, size, tf.maximum(new_h, size)),
          tf.where(width < height, size, tf.maximum(new_w, size)))


def _to_uint8(image):
  return tf.saturate_cast(tf.round(image), tf.uint8)


def _check_size(image, size):
  shape = tf.shape(image)
  return tf.debugging.assert_greater_equal(
      tf.minimum(shape[0], shape[1]), size,
      message=f'image is smaller than the {size}x{size} crop; resize it first '
      '(resize_shorter_and_center_crop) or lower the crop size')


def resize_shorter_and_center_crop(image, size=256, antialias=True):
  """The paper's stored format (Section 2): shorter side to `size`, then the centre patch.

  Bilinear with antialiasing (like PIL's BILINEAR), so a downscaled image does not alias;
  an image already at the new size passes through unchanged (antialias=False: plain
  bilinear). uint8 [h, w, 3] -> uint8 [size, size, 3].
  """
  shape = tf.shape(image)
  new_h, new_w = _shorter_side_shape(shape[0], shape[1], size)
  image = tf.cond(
      tf.logical_and(new_h == shape[0], new_w == shape[1]),
      lambda: image,
      lambda: _to_uint8(tf.image.resize(image, [new_h, new_w], antialias=antialias)))
  return center_crop(image, size)


def warp_resize(image, size=256):
  """Caffe's stored format: the whole image resized to size x size, aspect ratio ignored.

  Bilinear without antialiasing, as Caffe's convert_imageset (OpenCV INTER_LINEAR); an
  image already size x size passes through. uint8 [h, w, 3] -> uint8 [size, size, 3].
  """
  shape = tf.shape(image)
  resized = tf.cond(
      tf.logical_and(shape[0] == size, shape[1] == size),
      lambda: image,
      lambda: _to_uint8(tf.image.resize(image, [size, size], antialias=False)))
  resized.set_shape([size, size, 3])
  return resized


def _crop_offsets(seed, height, width, size):
  """Uniform top-left corner (y, x) of a size x size window inside [height, width]."""
  rows, cols = height - size + 1, width - size + 1
  index = tf.random.stateless_uniform([], seed, 0, rows * cols, dtype=tf.int32)
  return tf.stack([index // cols, index % cols])


def _flip_if(image, seed):
  """Mirrors `image` [h, w, c] left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed, 0, 2, dtype=tf.int32) > 0
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_crop_and_flip(image, size, seed, flip=True):
  """A random size x size patch, mirrored with probability 1/2 (Section 4.1).

  The position is uniform over all windows in the image; both draws come from `seed`.
  (The original code draws one position and flip per 32 images; here each image draws.)

  Args:
    image: uint8 [h, w, 3], h and w >= size (256 x 256 in the paper).
    size: side of the patch (224).
    seed: int [2].
    flip: False gives the crop alone.
  Returns:
    uint8 [size, size, 3].
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.shape(image)
  with tf.control_dependencies([_check_size(image, size)]):
    offsets = _crop_offsets(crop_seed, shape[0], shape[1], size)
  image = tf.slice(image, tf.concat([offsets, [0]], 0), [size, size, 3])
  return _flip_if(image, flip_seed) if flip else image


def decode_and_random_crop(image_bytes, size, seed, resize_size=256, flip=True):
  """Fused decode_rgb -> resize_shorter_and_center_crop -> random_crop_and_flip.

  For a full-size JPEG (TFDS imagenet2012 stores the originals) only the chosen window's
  source region is decoded, then resampled on the full resize's grid: for the same seed
  the unfused path's result, up to 1 in rare pixels. A truncated JPEG raises only if the
  region reaches its missing rows. JPEGs already at the stored size are decoded whole;
  other formats take the unfused path.

  Args:
    image_bytes: scalar tf.string.
    size: side of the patch (224).
    seed: int [2], used as random_crop_and_flip uses it.
    resize_size: the shorter side and centre patch of the stored image (256).
    flip: False gives the crop alone.
  Returns:
    uint8 [size, size, 3].
  """

  def unfused():
    image = resize_shorter_and_center_crop(decode_rgb(image_bytes), resize_size)
    return random_crop_and_flip(image, size, seed, flip=flip)

  def fused():
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(image_bytes)
    src = shape[:2]
    new_h, new_w = _shorter_side_shape(src[0], src[1], resize_size)
    new = tf.stack([new_h, new_w])
    offsets = _crop_offsets(crop_seed, resize_size, resize_size, size)
    start = (new - resize_size) // 2 + offsets  # Window's corner in the resized image.
    # The same scale tf.image.resize uses; pixel centres follow (x + 0.5) / scale - 0.5.
    scale = tf.cast(new, tf.float32) / tf.cast(src, tf.float32)

    def decode_window():
      # Source rows/cols the resampling filter can touch, with 2 pixels to spare: JPEG
      # chroma upsampling makes a cropped decode's last column differ from a full decode's.
      radius = tf.math.ceil(tf.maximum(1.0 / scale, 1.0)) + 2.0
      lo = tf.cast(tf.math.floor(tf.cast(start, tf.float32) / scale - radius), tf.int32)
      hi = tf.cast(tf.math.ceil(tf.cast(start + size, tf.float32) / scale + radius),
                   tf.int32)
      lo, hi = tf.maximum(lo, 0), tf.minimum(hi, src)
      window = tf.image.decode_and_crop_jpeg(
          image_bytes, tf.concat([lo, hi - lo], 0), channels=3)
      translation = tf.cast(lo, tf.float32) * scale - tf.cast(start, tf.float32)
      return _to_uint8(tf.raw_ops.ScaleAndTranslate(
          images=window[None], size=[size, size], scale=scale, translation=translation,
          kernel_type='triangle', antialias=True)[0])

    def decode_all():
      # Already at the stored size: nothing to resample, and nothing saved by a crop.
      image = tf.io.decode_jpeg(image_bytes, channels=3)
      return tf.slice(image, tf.concat([start, [0]], 0), [size, size, 3])

    image = tf.cond(tf.reduce_all(new == src), decode_all, decode_window)
    image.set_shape([size, size, 3])
    return _flip_if(image, flip_seed) if flip else image

  return tf.cond(tf.io.is_jpeg(image_bytes), fused, unfused)


def lighting_offset(alpha):
  """The PCA lighting offset sum_i alpha_i * PCA_STDDEVS[i] * PCA_EIGVECS[:, i] (pixels.py).

  alpha: float32 [..., 3], a coefficient per component -> float32 [..., 3], RGB in 0-255.
  """
  vecs = tf.constant(pixels.PCA_EIGVECS, tf.float32)
  return tf.linalg.matvec(vecs, alpha * tf.constant(pixels.PCA_STDDEVS, tf.float32))


def pca_lighting(seed, std=0.1):
  """A random PCA lighting offset for one image (Section 4.1, 'altering the intensities').

  alpha_i ~ N(0, std) from `seed`; pixels.normalize adds the offset to every pixel on the
  device. (The original code also divides the image by 1 + std; the paper does not.
  fb.resnet.torch's constants scale alpha by variances: docs/reference.md.)

  Args:
    seed: int [2].
    std: standard deviation of alpha (0.1 in the paper).
  Returns:
    float32 [3].
  """
  return lighting_offset(std * tf.random.stateless_normal([3], seed))


def center_crop(image, size):
  """The centre patch, offsets rounded down as the original code's: [h, w, c] with h, w >=
  size -> [size, size, c], same dtype."""
  shape = tf.shape(image)
  with tf.control_dependencies([_check_size(image, size)]):
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return tf.slice(image, tf.stack([top, left, 0]), tf.stack([size, size, shape[2]]))


def ten_views(image, size):
  """The paper's ten test patches (Section 4.1): top-left, top-right, centre, bottom-left,
  bottom-right (pixels.VIEWS), then the same five mirrored. uint8 [h, w, 3] (256 x 256 in
  the paper) -> uint8 [10, size, size, 3] (size 224).
  """
  shape = tf.shape(image)
  with tf.control_dependencies([_check_size(image, size)]):
    bottom, right = shape[0] - size, shape[1] - size
  corners = [(0, 0), (0, right), (bottom // 2, right // 2), (bottom, 0), (bottom, right)]
  views = tf.stack([tf.slice(image, tf.stack([y, x, 0]), [size, size, 3])
                    for y, x in corners])
  return tf.concat([views, tf.reverse(views, axis=[2])], axis=0)
