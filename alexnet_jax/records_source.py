"""config.data.dataset='records': decoded 256 x 256 images in NumPy shards (records.py)
under config.data.data_dir, written from a folder or TFDS by `python -m alexnet_jax.prepare
records`: the fast way to train (no JPEG decoding; benchmarks/NOTES.md, item 16).

Records give the batches of the folder they were prepared from: the same order
(data_source.global_order) and the same crops, flips and lighting. A batch is read by one
NumPy function (read, check, crop, mirror), its augmentation drawn for all its examples at
once (stateless_random.py, bit for bit tf.data's draws), because per-example tf.data work
is what limits the other paths. A record that cannot be read or fails its checksum is a
bad image (dropped in training, masked in evaluation).
"""

import os
import sys

import numpy as np
import tensorflow as tf

from alexnet_jax import data_source
from alexnet_jax import pixels
from alexnet_jax import records
from alexnet_jax import stateless_random


def _path(data):
  return os.path.abspath(os.path.expanduser(data.data_dir))


def _root(data, split=None):
  """ROOT of config.data.dataset='records', checked to hold a complete `split` (or, with
  split None, its class names)."""
  root = _path(data) if data.data_dir else ''
  expected = (f'ROOT/{split}/{records.INDEX_FILE}' if split is not None
              else f'ROOT/{records.CLASSES_FILE}')
  if not root or not (records.exists(root, split) if split is not None
                      else os.path.exists(os.path.join(root, records.CLASSES_FILE))):
    raise FileNotFoundError(
        f"No records {'of split ' + repr(split) + ' ' if split else ''}in data_dir="
        f"{data.data_dir!r} (config.data.dataset='records'; expected {expected}). Write "
        'them once from a folder or a TFDS dataset with `python -m alexnet_jax.prepare '
        'records --dataset=folder|imagenet2012 --data_dir=SOURCE --out=ROOT` (docs/data.md, '
        '"Records") and set config.data.data_dir=ROOT.')
  return root


def splits(data):
  root = _root(data)
  return sorted(d for d in os.listdir(root) if records.exists(root, d))


def num_examples(data, split):
  return records.num_examples(_root(data, split), split)


def stored_size(data, split):
  stored = records.open_split(_root(data, split), split)
  return stored.size, stored.resize_mode


def holds(path):
  return os.path.exists(os.path.join(path, records.CLASSES_FILE))


def train_augmentation(seed, positions, stored_size, image_size, data):
  """The random draws of data_source._train_example for a batch of positions, in NumPy,
  equal bit for bit.

  Returns (corners int32 [b, 2]: the crop's top-left (row, column) in the stored_size
  square; mirror bool [b]; lighting float32 [b, 3]).
  """
  key = stateless_random.fold_in((seed, 0), positions)
  crop_seed, light_seed = stateless_random.split(key)
  window_seed, flip_seed = stateless_random.split(crop_seed)  # random_crop_and_flip's.
  n = len(positions)
  bits = stateless_random.samples(np.concatenate([window_seed, flip_seed, light_seed]))
  side = stored_size - image_size + 1  # preprocessing._crop_offsets.
  index = stateless_random.uniform_int(None, 0, side * side, bits=bits[:n])
  corners = np.stack([index // side, index % side], 1)
  mirror = (stateless_random.uniform_int(None, 0, 2, bits=bits[n:2 * n]) > 0 if data.flip
            else np.zeros(n, bool))
  if data.pca_lighting_std > 0:
    # preprocessing.pca_lighting as tf.data runs it: grappler folds std * PCA_STDDEVS into
    # one constant, and the 3 x 3 product sums in order (tests check it is bit-exact).
    scaled = stateless_random.normal(None, 3, bits=bits[2 * n:]) * (
        np.float32(data.pca_lighting_std) * np.asarray(pixels.PCA_STDDEVS, np.float32))
    vecs = np.asarray(pixels.PCA_EIGVECS, np.float32)
    lighting = ((vecs[:, 0] * scaled[:, :1] + vecs[:, 1] * scaled[:, 1:2])
                + vecs[:, 2] * scaled[:, 2:])
  else:
    lighting = np.zeros((n, 3), np.float32)
  return corners.astype(np.int32), mirror, lighting.astype(np.float32)


def _views_np(images, size, num_views, out):
  """The centre (num_views 1) or preprocessing.ten_views of images uint8 [b, S, S, 3] into
  out [b, size, size, 3] or [b, 10, size, size, 3]."""
  edge = images.shape[1] - size
  if num_views == 1:
    np.copyto(out, images[:, edge // 2:edge // 2 + size, edge // 2:edge // 2 + size])
    return
  corners = [(0, 0), (0, edge), (edge // 2, edge // 2), (edge, 0), (edge, edge)]
  mirrored = np.empty(images.shape[1:], np.uint8)
  for k, image in enumerate(images):
    for c in range(3):  # Channel by channel: records.read_windows says why.
      np.copyto(mirrored[:, :, c], image[:, ::-1, c])
    for v, (y, x) in enumerate(corners):
      np.copyto(out[k, v], image[y:y + size, x:x + size])
      # The mirror of the window at (y, x) is the mirrored image's window at (y, edge - x).
      np.copyto(out[k, v + 5], mirrored[y:y + size, edge - x:edge - x + size])


def _aligned_empty(shape):
  """np.empty uint8 on a 64-byte boundary: tf.numpy_function then wraps it, no copy."""
  raw = np.empty(int(np.prod(shape)) + 64, np.uint8)
  start = -raw.ctypes.data % 64
  return raw[start:start + int(np.prod(shape))].reshape(shape)


def _buffers(shape):
  """take() -> an aligned uint8 array of `shape` that nothing else references: one it
  returned before, once the batch made from it is gone (its tensor and the arrays made
  from it hold references), else a new one. Reuse spares the page faults of a fresh
  batch-sized array (benchmarks/NOTES.md, item 16.8)."""
  pool, free = [], []  # free[i]: pool[i]'s reference count when nothing else holds it.

  def take():
    for i in range(len(pool)):
      if sys.getrefcount(pool[i]) == free[i]:
        return pool[i]
    pool.append(_aligned_empty(shape))
    free.append(sys.getrefcount(pool[-1]))  # Counted as above: the list, the argument.
    return pool[-1]

  return take


def _open(data, split, image_size):
  """The records of `split`, checked against config.data, and their labels int32 [n]
  (indexing config.data.class_names where it is set, as for folders)."""
  root = _root(data, split)
  stored = records.open_split(root, split)
  if stored.size != data.resize_size:
    raise ValueError(f'The records in {stored.root} are stored at {stored.size} x '
                     f'{stored.size}; set config.data.resize_size={stored.size} (or prepare '
                     f'them at {data.resize_size}).')
  if stored.resize_mode != data_source.resize_mode(data):
    raise ValueError(f'The records in {stored.root} were resized with resize_mode='
                     f'{stored.resize_mode!r}; set config.data.resize_mode='
                     f'{stored.resize_mode!r} (or prepare them with --resize_mode='
                     f'{data_source.resize_mode(data)}).')
  labels = stored.label
  if data.get('class_names'):
    ours, theirs = list(data.class_names), records.read_classes(root)
    unknown = sorted(set(theirs) - set(ours))
    if unknown:
      raise ValueError(f'The records in {root} have classes {unknown[:5]} that '
                       'config.data.class_names lacks; labels come from there.')
    labels = np.asarray([ours.index(c) for c in theirs], np.int32)[labels]
  if image_size > stored.size:
    raise ValueError(f'config.data.image_size={image_size} exceeds the stored '
                     f'{stored.size} x {stored.size}.')
  return stored, labels


def create_split(data, split, *, train, seed, start_step, image_size, num_views, batch,
                 shard, with_file_names):
  """This process's batches of a records split (data_source.Source.create_split)."""
  stored, labels = _open(data, split, image_size)
  n = stored.num_examples
  if train and n < batch * shard[1]:
    raise ValueError(f'The global batch size {batch * shard[1]} exceeds the {n} examples '
                     f'of {split!r}.')
  order, num_real = data_source.global_order(n, train=train, seed=seed, shard=shard,
                                             start_step=start_step, batch=batch)
  order = order.enumerate()  # Batch k holds this process's stream places kB .. kB + B - 1.
  bad = {}  # File name -> why, filled by the reader; Batches names what went missing.

  def good_mask(ids, errors):
    """bool [len(ids)], False where errors ({k: why}) names a bad record; notes why."""
    for k, why in errors.items():
      bad[stored.name(ids[k])] = why
    ok = np.ones(len(ids), bool)
    ok[list(errors)] = False
    return ok

  if train:
    buffers = _buffers((batch, image_size, image_size, 3))

    def read(k, ids, positions):
      corners, mirror, lighting = train_augmentation(seed, positions, stored.size,
                                                     image_size, data)
      images = buffers()
      errors = records.read_windows(stored, ids, corners, mirror, image_size, images)
      ok = good_mask(ids, errors)
      index = k * batch + np.arange(len(ids))
      if not ok.all():  # Dropped here; rebatch below refills the batch from the next.
        images, lighting, ids, index = images[ok], lighting[ok], ids[ok], index[ok]
      return images, lighting, labels[ids], ids, index

    shape = [None, image_size, image_size, 3]
    types = (tf.uint8, tf.float32, tf.int32, tf.int64, tf.int64)
    keys = ('image', 'lighting', 'label', 'id', 'index')
  else:
    view_shape = [image_size] * 2 + [3] if num_views == 1 else [10] + [image_size] * 2 + [3]
    buffers = _buffers((batch,) + tuple(view_shape))
    stored_buffers = _buffers((batch, stored.size, stored.size, 3))

    def read(k, ids, positions):
      del positions
      whole = stored_buffers()
      ok = good_mask(ids, records.read(stored, ids, whole)) & (ids >= 0)
      whole[~ok] = 0  # Padding and bad records: zeros, masked.
      images = buffers()
      _views_np(whole, image_size, num_views, images)
      index = np.where(ok, k * batch + np.arange(len(ids)), -1)
      return images, labels[np.maximum(ids, 0)], ok, ids, index

    shape = [None] + view_shape
    types = (tf.uint8, tf.int32, tf.bool, tf.int64, tf.int64)
    keys = ('image', 'label', 'mask', 'id', 'index')

  names_t = tf.constant(stored.file_name)

  def read_batch(k, ids_positions):
    ids, positions = ids_positions
    out = dict(zip(keys, tf.numpy_function(read, [k, ids, positions], types,
                                           stateful=False)))
    out['image'] = tf.ensure_shape(out['image'], shape)
    for key in keys[1:]:
      out[key] = tf.ensure_shape(out[key], [None] + ([3] if key == 'lighting' else []))
    ids = out.pop('id')
    if with_file_names:
      out['file_name'] = tf.where(ids >= 0, tf.gather(names_t, tf.maximum(ids, 0)), b'')
    return out

  ds = order.map(read_batch, num_parallel_calls=tf.data.AUTOTUNE)
  if train:
    ds = ds.rebatch(batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(data_source.options(data))
  names = order.flat_map(lambda k, ids_positions: tf.data.Dataset.from_tensor_slices(
      tf.gather(names_t, tf.maximum(ids_positions[0], 0))))
  return data_source.Batches(
      ds, names, data, with_file_names, total=None if train else num_real,
      describe=lambda name: bad.get(data_source.display_name(name), 'the reader left it out'),
      remedy=records.REWRITE)



SOURCE = data_source.Source(
    class_names=lambda data, split=None: records.read_classes(_root(data)), splits=splits,
    num_examples=num_examples,
    describe=lambda data: f'records {_path(data)}', directory=_path,
    create_split=create_split, data_dir="the records' root (prepare records)", holds=holds,
    stored_size=stored_size)
