"""Per-image preprocessing against PIL, NumPy slicing and NumPy statistics.

Real photographs come from the embedded sample, data/sample (ImageNet photographs of
Imagenette's classes, 224 on the shorter side, JPEG); other sizes and formats are made from
them with PIL. Images whose pixels encode their own
coordinates (channel 0 = row, channel 1 = column) make crops exactly checkable.
"""

import io
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import pixels
from alexnet_jax import preprocessing as pp
from configs import sample

PER_CLASS = 10  # Imagenette images extracted per class: 100 in all.


@pytest.fixture(scope='module')
def imagenette_paths():
  """Paths of 100 real photographs of the embedded sample: the first ten of each class."""
  root = pathlib.Path(sample.SAMPLE_DIR) / 'train'
  paths = [p for wnid in sorted(root.iterdir()) for p in sorted(wnid.iterdir())[:PER_CLASS]]
  assert len(paths) == 10 * PER_CLASS
  return paths


@pytest.fixture(scope='module')
def photos(imagenette_paths):
  """Three real photographs as uint8 [224, 224, 3] arrays (PIL's decode)."""
  return [pil_rgb(imagenette_paths[i].read_bytes()) for i in (0, 35, 70)]


def pil_rgb(data):
  """PIL's decode of encoded bytes, converted to RGB: uint8 [h, w, 3]."""
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def encode(image, fmt='JPEG', mode=None, **kwargs):
  """uint8 [h, w, c] -> bytes in `fmt`, after converting to PIL `mode` if given."""
  pil = Image.fromarray(image)
  if mode:
    pil = pil.convert(mode)
  buf = io.BytesIO()
  pil.save(buf, fmt, **kwargs)
  return buf.getvalue()


def resized(image, height, width):
  """A photo at another size (PIL bicubic): input content, not an oracle."""
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def coordinate_image(height, width):
  """uint8 [height, width, 3]: row, column, and (7 row + column) mod 256."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([rows, cols, (7 * rows + cols) % 256], -1).astype(np.uint8)


def locate(crop, image):
  """(top, left, mirrored) of the window of `image` that `crop` is, checked exactly.

  `image` is a coordinate_image, so the corner pixels of `crop` name the window.
  """
  size = crop.shape[0]
  mirrored = size > 1 and crop[0, 0, 1] > crop[0, -1, 1]
  window = crop[:, ::-1] if mirrored else crop
  top, left = int(window[0, 0, 0]), int(window[0, 0, 1])
  assert 0 <= top <= image.shape[0] - size and 0 <= left <= image.shape[1] - size
  np.testing.assert_array_equal(window, image[top:top + size, left:left + size])
  return top, left, bool(mirrored)


def mean_abs_diff(a, b):
  return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def map_seeds(fn, n, salt=0):
  """fn(seed) for seeds [i, salt], i < n, through tf.data as the input pipeline runs it."""
  seeds = np.stack([np.arange(n), np.full(n, salt)], 1).astype(np.int64)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(fn).batch(n)
  return ds.get_single_element().numpy()


# decode_rgb


def test_decode_rgb_jpeg_matches_pil(photos, imagenette_paths):
  for path in imagenette_paths[::20]:
    data = path.read_bytes()
    image = pp.decode_rgb(tf.constant(data)).numpy()
    ref = pil_rgb(data)
    assert image.dtype == np.uint8 and image.shape == ref.shape == (224, 224, 3)
    # TF's default DCT (fast integer) and PIL's (accurate) differ by about 1 on average.
    assert mean_abs_diff(image, ref) < 1.5
    assert np.abs(image.astype(int) - ref).max() <= 8


def test_decode_rgb_ignores_exif_orientation(photos):
  """EXIF orientation is not applied: pixels come out as stored, as TFDS, PIL's
  Image.open and the original code read ImageNet (a 90-degree tag would change the shape)."""
  exif = Image.Exif()
  exif[0x0112] = 6  # "Rotate 90 degrees clockwise to display".
  data = encode(np.ascontiguousarray(photos[0][:, :200]), exif=exif.tobytes())
  assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
  out = pp.decode_rgb(data).numpy()
  assert out.shape == (224, 200, 3)
  assert mean_abs_diff(out, pil_rgb(data)) < 1.5  # The two decoders' usual difference.


@pytest.mark.parametrize('mode', ['L', 'CMYK'])
def test_decode_rgb_grayscale_and_cmyk_jpeg(photos, mode):
  data = encode(photos[0], mode=mode)
  assert Image.open(io.BytesIO(data)).mode == mode
  image = pp.decode_rgb(tf.constant(data)).numpy()
  assert image.dtype == np.uint8 and image.shape == (224, 224, 3)
  assert mean_abs_diff(image, pil_rgb(data)) < 1.0
  if mode == 'L':
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
  else:  # The CMYK round trip keeps the colours: compare with the RGB photo itself.
    assert mean_abs_diff(image, photos[0]) < 4.0


@pytest.mark.parametrize('fmt', ['PNG', 'RGBA', 'GIF', 'BMP', 'WEBP'])
def test_decode_rgb_lossless_formats_are_exact(photos, tmp_path, fmt):
  image = photos[1]
  if fmt == 'RGBA':  # An alpha channel is dropped, as PIL's convert('RGB') drops it.
    alpha = np.arange(224 * 224, dtype=np.uint32).reshape(224, 224, 1) % 256
    data = encode(np.concatenate([image, alpha.astype(np.uint8)], -1), 'PNG')
  elif fmt == 'WEBP':
    data = encode(image, 'WEBP', lossless=True)
  else:
    data = encode(image, fmt)
  # ImageNet's one PNG is named .JPEG: the name must not matter, only the bytes.
  path = tmp_path / 'n02105855_2933.JPEG'
  path.write_bytes(data)
  decoded = pp.decode_rgb(tf.io.read_file(str(path))).numpy()
  assert decoded.dtype == np.uint8 and decoded.shape == (224, 224, 3)
  np.testing.assert_array_equal(decoded, pil_rgb(data))
  if fmt in ('PNG', 'RGBA', 'BMP', 'WEBP'):
    np.testing.assert_array_equal(decoded, image)


def test_decode_rgb_animated_gif_gives_first_frame(photos):
  frames = [Image.fromarray(photos[0]), Image.fromarray(255 - photos[0])]
  buf = io.BytesIO()
  frames[0].save(buf, 'GIF', save_all=True, append_images=frames[1:])
  decoded = pp.decode_rgb(tf.constant(buf.getvalue())).numpy()
  assert decoded.shape == (224, 224, 3)
  np.testing.assert_array_equal(decoded, pil_rgb(buf.getvalue()))  # PIL: frame 0.


def test_decode_rgb_static_shape_in_graph(photos):
  fn = tf.function(pp.decode_rgb, input_signature=[tf.TensorSpec([], tf.string)])
  out = fn.get_concrete_function().structured_outputs
  assert out.shape.as_list() == [None, None, 3] and out.dtype == tf.uint8


@pytest.mark.parametrize('kind', ['truncated', 'empty', 'not_an_image'])
def test_decode_rgb_rejects_bad_bytes(imagenette_paths, kind):
  data = imagenette_paths[0].read_bytes()
  bad = {'truncated': data[:len(data) // 2], 'empty': b'', 'not_an_image': b'hello'}[kind]
  with pytest.raises(tf.errors.InvalidArgumentError):
    pp.decode_rgb(tf.constant(bad))


# resize_shorter_and_center_crop


def pil_resize_and_center_crop(image, size=256):
  """Oracle: PIL bilinear (antialiased when shrinking) to shorter side `size`, centre."""
  h, w = image.shape[:2]
  if h <= w:
    new_h, new_w = size, round(w * size / h)
  else:
    new_h, new_w = round(h * size / w), size
  out = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return out[top:top + size, left:left + size]


def bilinear(image, new_h, new_w):
  """Oracle: plain bilinear resampling, half-pixel centres: float64 [new_h, new_w, c]."""

  def weights(n_in, n_out):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - (x - lo))
    np.add.at(m, (np.arange(n_out), hi), x - lo)
    return m

  h, w = image.shape[:2]
  return np.einsum('yh,xw,hwc->yxc', weights(h, new_h), weights(w, new_w),
                   image.astype(np.float64))


@pytest.mark.parametrize('shape', [(375, 500), (500, 375), (100, 150), (600, 800),
                                   (333, 257)])
def test_resize_shorter_and_center_crop_matches_pil(photos, shape):
  image = resized(photos[2], *shape)
  out = pp.resize_shorter_and_center_crop(tf.constant(image)).numpy()
  assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
  ref = pil_resize_and_center_crop(image)
  # PIL resamples in fixed point: off by one in some pixels, never more.
  assert np.abs(out.astype(int) - ref).max() <= 1
  assert mean_abs_diff(out, ref) < 0.3


@pytest.mark.parametrize('shape', [(256, 256), (256, 301), (301, 256)])
def test_resize_shorter_and_center_crop_passes_stored_size_through(shape):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
  out = pp.resize_shorter_and_center_crop(tf.constant(image)).numpy()
  top, left = (shape[0] - 256) // 2, (shape[1] - 256) // 2  # 22 for 301: rounded down.
  np.testing.assert_array_equal(out, image[top:top + 256, left:left + 256])


def test_resize_shorter_and_center_crop_without_antialias():
  image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  out = pp.resize_shorter_and_center_crop(tf.constant(image), 16, antialias=False).numpy()
  ref = np.round(bilinear(image, 16, 24))[:, 4:20]
  assert np.abs(out.astype(int) - ref).max() <= 1 and mean_abs_diff(out, ref) < 0.05
  smooth = pp.resize_shorter_and_center_crop(tf.constant(image), 16).numpy()
  assert mean_abs_diff(smooth, pil_resize_and_center_crop(image, 16)) < 0.3
  assert mean_abs_diff(smooth, out) > 5  # Antialiasing averages the noise away.


# warp_resize (Caffe's stored format)


@pytest.mark.parametrize('shape', [(75, 100), (100, 75), (20, 30)])
def test_warp_resize_is_plain_bilinear_to_a_square(shape):
  """Caffe's convert_imageset: cv::resize to size x size, INTER_LINEAR (no antialias)."""
  image = np.random.default_rng(5).integers(0, 256, shape + (3,), dtype=np.uint8)
  out = pp.warp_resize(tf.constant(image), 48).numpy()
  assert out.dtype == np.uint8 and out.shape == (48, 48, 3)
  ref = np.round(bilinear(image, 48, 48))
  assert np.abs(out.astype(int) - ref).max() <= 1 and mean_abs_diff(out, ref) < 0.05


def test_warp_resize_passes_stored_size_through():
  image = np.random.default_rng(6).integers(0, 256, (48, 48, 3), dtype=np.uint8)
  np.testing.assert_array_equal(pp.warp_resize(tf.constant(image), 48).numpy(), image)


# random_crop_and_flip


def test_random_crop_and_flip_is_a_window_or_its_mirror():
  image = coordinate_image(256, 256)
  seen = set()
  for i in range(12):
    crop = pp.random_crop_and_flip(tf.constant(image), 224, tf.constant([i, 3])).numpy()
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    seen.add(locate(crop, image)[2])
  assert seen == {False, True}


def test_random_crop_and_flip_real_photo_exhaustive_search(photos):
  image = pil_resize_and_center_crop(photos[0])
  crop = pp.random_crop_and_flip(tf.constant(image), 224, tf.constant([5, 5])).numpy()
  matches = [(y, x, m) for m in (False, True) for y in range(33) for x in range(33)
             if np.array_equal(crop[:, ::-1] if m else crop,
                               image[y:y + 224, x:x + 224])]
  assert len(matches) == 1


def test_random_crop_and_flip_same_seed_same_patch():
  image = tf.constant(coordinate_image(64, 80))
  a = pp.random_crop_and_flip(image, 32, tf.constant([11, 12])).numpy()
  b = pp.random_crop_and_flip(image, 32, tf.constant([11, 12])).numpy()
  np.testing.assert_array_equal(a, b)
  others = {locate(pp.random_crop_and_flip(image, 32, tf.constant([11, s])).numpy(),
                   coordinate_image(64, 80)) for s in range(13, 21)}
  assert len(others) > 4


def test_random_crop_and_flip_distribution():
  """Offsets uniform over all 5 x 7 windows, corners included; mirrored half the time."""
  image = coordinate_image(12, 14)
  n = 1400
  crops = map_seeds(lambda s: pp.random_crop_and_flip(tf.constant(image), 8, s), n)
  located = [locate(c, image) for c in crops]
  counts = np.zeros((5, 7), int)
  for top, left, _ in located:
    counts[top, left] += 1
  assert counts.min() >= 20 and counts.max() <= 60  # Expected 40 each (sd 6).
  assert 0.45 < np.mean([m for _, _, m in located]) < 0.55  # sd 0.013.
  # flip=False: the same windows, never mirrored.
  plain = map_seeds(lambda s: pp.random_crop_and_flip(tf.constant(image), 8, s,
                                                      flip=False), n)
  assert [locate(c, image) for c in plain] == [(y, x, False) for y, x, _ in located]


def test_crops_reject_images_smaller_than_the_crop():
  image = tf.zeros([200, 300, 3], tf.uint8)
  with pytest.raises(tf.errors.InvalidArgumentError, match='smaller than'):
    pp.random_crop_and_flip(image, 224, tf.constant([0, 0]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='smaller than'):
    pp.center_crop(image, 224)
  with pytest.raises(tf.errors.InvalidArgumentError, match='smaller than'):
    pp.ten_views(image, 224)


# decode_and_random_crop (fused)


def unfused(data, seed, flip=True):
  image = pp.resize_shorter_and_center_crop(pp.decode_rgb(data))
  return pp.random_crop_and_flip(image, 224, seed, flip=flip)


fused_fn = tf.function(lambda data, seed: pp.decode_and_random_crop(data, 224, seed))
unfused_fn = tf.function(unfused)


@pytest.mark.parametrize('shape', [(375, 500), (500, 375), (224, 224), (333, 257),
                                   (256, 256), (256, 400)])
def test_decode_and_random_crop_equals_unfused(photos, shape):
  for i, photo in enumerate(photos):
    data = tf.constant(encode(resized(photo, *shape), quality=90))
    for s in range(4):
      seed = tf.constant([i, s])
      a, b = fused_fn(data, seed).numpy(), unfused_fn(data, seed).numpy()
      assert a.shape == (224, 224, 3) and a.dtype == np.uint8
      diff = np.abs(a.astype(int) - b)
      assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
      if shape[0] == 256 or shape[1] == 256:  # Already stored size: decoded whole.
        assert diff.max() == 0


@pytest.mark.parametrize('kind', ['L', 'CMYK', 'progressive'])
def test_decode_and_random_crop_other_jpegs(photos, kind):
  image = resized(photos[1], 375, 500)
  data = tf.constant(encode(image, progressive=True) if kind == 'progressive'
                     else encode(image, mode=kind))
  for s in range(3):
    seed = tf.constant([7, s])
    a, b = fused_fn(data, seed).numpy(), unfused_fn(data, seed).numpy()
    assert a.shape == (224, 224, 3) and np.abs(a.astype(int) - b).max() <= 1


def test_decode_and_random_crop_png_takes_unfused_path(photos):
  data = tf.constant(encode(resized(photos[0], 300, 400), 'PNG'))
  for s in range(3):
    for flip in (True, False):
      seed = tf.constant([1, s])
      np.testing.assert_array_equal(
          pp.decode_and_random_crop(data, 224, seed, flip=flip).numpy(),
          unfused(data, seed, flip=flip).numpy())


def test_decode_and_random_crop_without_flip_is_the_same_window(photos):
  data = tf.constant(encode(resized(photos[2], 375, 500)))
  for s in range(6):
    seed = tf.constant([2, s])
    flipped = pp.decode_and_random_crop(data, 224, seed).numpy()
    plain = pp.decode_and_random_crop(data, 224, seed, flip=False).numpy()
    assert (np.array_equal(flipped, plain) or
            np.array_equal(flipped, plain[:, ::-1]))


def test_decode_and_random_crop_bad_bytes(photos):
  data = encode(resized(photos[0], 375, 500))
  for bad in (b'', b'hello', data[:len(data) // 2]):
    for s in range(3):
      with pytest.raises(tf.errors.InvalidArgumentError):
        pp.decode_and_random_crop(tf.constant(bad), 224, tf.constant([0, s]))
  # Cut near the end, a window above the cut decodes (to the intact image's patch); one
  # that reaches the missing rows raises. It never returns made-up pixels.
  for s in range(6):
    seed = tf.constant([0, s])
    intact = pp.decode_and_random_crop(tf.constant(data), 224, seed).numpy()
    try:
      out = pp.decode_and_random_crop(tf.constant(data[:int(0.95 * len(data))]), 224,
                                      seed).numpy()
    except tf.errors.InvalidArgumentError:
      continue
    np.testing.assert_array_equal(out, intact)


# pca_lighting, lighting_offset

EIGVECS = np.array(pixels.PCA_EIGVECS, np.float64)  # Columns are the components.
STDDEVS = np.array(pixels.PCA_STDDEVS, np.float64)


def model_covariance(std):
  """sum_i (std s_i)^2 p_i p_i^T, in NumPy."""
  return sum((std * STDDEVS[i])**2 * np.outer(EIGVECS[:, i], EIGVECS[:, i])
             for i in range(3))


def test_pca_constants_are_orthonormal_components():
  np.testing.assert_allclose(EIGVECS.T @ EIGVECS, np.eye(3), atol=2e-3)
  assert list(STDDEVS) == sorted(STDDEVS)  # Smallest first.


def test_lighting_offset_matches_numpy():
  alpha = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
  ref = np.stack([sum(a[i] * STDDEVS[i] * EIGVECS[:, i] for i in range(3)) for a in alpha])
  out = pp.lighting_offset(tf.constant(alpha)).numpy()
  assert out.shape == (5, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
  # One component alone moves pixels along its eigenvector, by its stddev.
  np.testing.assert_allclose(pp.lighting_offset(tf.constant([0., 0., 1.])).numpy(),
                             121.78 * EIGVECS[:, 2], rtol=1e-5)


def test_pca_lighting_draws_alpha_from_the_seed():
  for std in (0.1, 0.5):
    for s in range(3):
      seed = tf.constant([s, 9])
      alpha = std * tf.random.stateless_normal([3], seed)
      np.testing.assert_allclose(pp.pca_lighting(seed, std).numpy(),
                                 pp.lighting_offset(alpha).numpy(), rtol=1e-6)
  a, b = pp.pca_lighting(tf.constant([1, 2])), pp.pca_lighting(tf.constant([1, 3]))
  assert not np.allclose(a.numpy(), b.numpy())


def test_pca_lighting_covariance():
  offsets = map_seeds(lambda s: pp.pca_lighting(s, 0.1), 4000, salt=5).astype(np.float64)
  expected = model_covariance(0.1)
  np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.08 * expected.max())
  assert np.abs(offsets.mean(0)).max() < 0.6  # sd of the mean 12.2 / sqrt(4000) = 0.19.
  brightness = np.ones(3) / np.sqrt(3)
  assert 11.5 < np.std(offsets @ brightness) < 13  # 0.1 * 121.78 = 12.2.


def test_pca_matches_natural_image_pixel_covariance(imagenette_paths):
  """The largest component is brightness, and it is the photos' own top component."""
  rgb = np.concatenate([pil_rgb(p.read_bytes()).reshape(-1, 3)
                        for p in imagenette_paths]).astype(np.float64)
  pixel_cov = np.cov(rgb.T)
  model = model_covariance(1.0)
  top_model = np.linalg.eigh(model)[1][:, -1]
  top_pixels = np.linalg.eigh(pixel_cov)[1][:, -1]
  assert abs(top_model @ np.ones(3)) / np.sqrt(3) > 0.99
  np.testing.assert_allclose(np.abs(top_model), [0.564, 0.576, 0.592], atol=2e-3)
  assert abs(top_model @ top_pixels) > 0.95
  # Frobenius error 14% on these 100 photos (about 2% over a third of Imagenette); the
  # transposed reading of the constants misses by over 100%.
  rel = lambda m: np.linalg.norm(m - pixel_cov) / np.linalg.norm(pixel_cov)
  assert rel(model) < 0.25
  transposed = (EIGVECS.T * STDDEVS**2) @ EIGVECS
  assert rel(transposed) > 1.0


# center_crop, ten_views


@pytest.mark.parametrize('shape,size', [((256, 256), 224), ((11, 13), 6), ((9, 9), 9)])
def test_center_crop_and_ten_views(shape, size):
  image = np.random.default_rng(2).integers(0, 256, shape + (3,), dtype=np.uint8)
  h, w = shape
  bottom, right = h - size, w - size
  windows = {'top_left': (0, 0), 'top_right': (0, right),
             'center': (bottom // 2, right // 2), 'bottom_left': (bottom, 0),
             'bottom_right': (bottom, right)}
  expected = [image[y:y + size, x:x + size] for y, x in (windows[v] for v in pixels.VIEWS)]
  expected = np.stack(expected + [v[:, ::-1] for v in expected])
  views = pp.ten_views(tf.constant(image), size).numpy()
  assert views.shape == (10, size, size, 3) and views.dtype == np.uint8
  np.testing.assert_array_equal(views, expected)
  y, x = windows['center']
  np.testing.assert_array_equal(pp.center_crop(tf.constant(image), size).numpy(),
                                image[y:y + size, x:x + size])
  if shape == (256, 256):
    assert windows['center'] == (16, 16)


def test_center_crop_keeps_dtype_and_channels():
  image = np.arange(6 * 8 * 2, dtype=np.float32).reshape(6, 8, 2)
  out = pp.center_crop(tf.constant(image), 3).numpy()
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, image[1:4, 2:5])


# normalize


@pytest.mark.parametrize('views', [False, True])
@pytest.mark.parametrize('mean_kind', ['channel', 'image'])
def test_normalize_matches_numpy(views, mean_kind):
  rng = np.random.default_rng(3)
  shape = (4, 10, 6, 5, 3) if views else (4, 6, 5, 3)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  lighting = rng.normal(0, 12, (4, 3)).astype(np.float32)
  mean = (np.array(pixels.CHANNEL_MEAN, np.float32) if mean_kind == 'channel' else
          rng.uniform(90, 140, (6, 5, 3)).astype(np.float32))
  lit = lighting.reshape((4,) + (1,) * (len(shape) - 2) + (3,))
  ref = images.astype(np.float64) + lit - mean
  out = jax.jit(pixels.normalize)(images, lighting, mean)
  assert out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-4)
  np.testing.assert_allclose(np.asarray(pixels.normalize(images, None, mean)),
                             images.astype(np.float64) - mean, rtol=1e-6, atol=1e-4)
  half = pixels.normalize(images, lighting, mean, dtype=jnp.bfloat16)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), ref, rtol=1e-2, atol=0.5)


def test_normalize_bgr_reverses_the_channels_last():
  """Mean, std and lighting stay RGB; the network's input is reversed (Caffe's BGR)."""
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  lighting = rng.normal(0, 12, (2, 3)).astype(np.float32)
  mean, std = np.array([122.7, 116.7, 104.0], np.float32), (58., 57., 57.5)
  rgb = np.asarray(pixels.normalize(images, lighting, mean, std=std))
  bgr = np.asarray(pixels.normalize(images, lighting, mean, std=std, channel_order='bgr'))
  np.testing.assert_array_equal(bgr, rgb[..., ::-1])
  np.testing.assert_allclose(bgr[0, 0, 0, 0], (images[0, 0, 0, 2] + lighting[0, 2] - 104.0)
                             / 57.5, rtol=1e-5)
  with pytest.raises(ValueError, match="channel_order='brg'"):
    pixels.normalize(images, channel_order='brg')


def test_normalize_default_mean_is_the_channel_mean():
  images = np.full((2, 3, 3, 3), 200, np.uint8)
  out = np.asarray(pixels.normalize(images))
  np.testing.assert_allclose(out[0, 0, 0], 200 - np.array([127.3, 119.7, 104.9]),
                             rtol=1e-6)


# mean_image, mean_for_crop


def test_mean_image_matches_numpy():
  rng = np.random.default_rng(4)
  parts = [rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
           rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8),
           rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)]
  everything = np.concatenate([p.reshape(-1, 7, 9, 3) for p in parts])
  out = pixels.mean_image(iter(parts))  # Any iterable: a generator over batches works.
  assert out.shape == (7, 9, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, everything.astype(np.float64).mean(0), rtol=1e-6)
  with pytest.raises(ValueError, match='one shape'):
    pixels.mean_image([parts[0], np.zeros((7, 8, 3), np.uint8)])
  with pytest.raises(ValueError, match='no images'):
    pixels.mean_image([])


@pytest.mark.parametrize('shape,size', [((256, 256), 224), ((11, 13), 6)])
def test_mean_for_crop_is_the_centre(shape, size):
  mean = np.random.default_rng(5).uniform(0, 255, shape + (3,)).astype(np.float32)
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  out = pixels.mean_for_crop(mean, size)
  np.testing.assert_array_equal(out, mean[top:top + size, left:left + size])
  # It is the mean of the centre crops: mean_for_crop(mean_image(x)) = mean_image(crops).
  images = np.random.default_rng(6).integers(0, 256, (3,) + shape + (3,), dtype=np.uint8)
  crops = [pp.center_crop(tf.constant(x), size).numpy() for x in images]
  np.testing.assert_allclose(pixels.mean_for_crop(pixels.mean_image(images), size),
                             pixels.mean_image(crops), rtol=1e-6)
  with pytest.raises(ValueError, match='smaller'):
    pixels.mean_for_crop(mean, max(shape) + 1)
