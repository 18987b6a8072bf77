"""The interface a data format implements (`Source`), and what every format shares: the
epoch order, the decoding of encoded images into augmented examples, the `Batches`
iterator.

A format is a module that builds one `Source` (folder_source.py, tfds_source.py,
records_source.py) and one line of input_pipeline.SOURCES. Every function takes
config.data first; see input_pipeline.py for what a batch holds.
"""

import os
from typing import Callable, NamedTuple

from absl import logging
import numpy as np
import tensorflow as tf

from alexnet_jax import preprocessing


class Source(NamedTuple):
  """One data format, as the rest of the code reads it. `data` below is config.data."""
  # (data, split=None) -> the dataset's own class names in label order (input_pipeline
  # applies config.data.class_names over them).
  class_names: Callable
  splits: Callable  # (data) -> the split names the dataset has.
  num_examples: Callable  # (data, split) -> examples in `split`, all processes together.
  describe: Callable  # (data) -> the dataset, in words.
  directory: Callable  # (data) -> the folder it lives in; the mean image is stored there.
  # (data, split, *, train, seed, start_step, image_size, num_views, batch, shard,
  # with_file_names) -> Batches of this process: shard = (index, count) reads rows
  # [index * batch, (index + 1) * batch) of each global batch of count * batch examples;
  # see input_pipeline.create_split.
  create_split: Callable
  # What config.data.data_dir must name, in words; '' where it may be empty.
  data_dir: str = ''
  # (path) -> whether the directory `path` is a dataset of this format (features --data).
  holds: Callable = lambda path: False
  # (data, split) -> (size, resize_mode) the images are stored at, or None where the
  # source resizes every image to config.data.resize_size as it reads it.
  stored_size: Callable = lambda data, split: None


def display_name(name):
  """A file name (bytes or str) as printable text; bytes that are not UTF-8 as \\xNN."""
  return name.decode('utf-8', 'backslashreplace') if isinstance(name, bytes) else name


# ---------------------------------------------------------------------------- order --

def from_step(epoch, steps_per_epoch, start_step, per_step=1):
  """The endless stream of epochs epoch(0), epoch(1), ... from training step start_step
  on: epoch(e) is a Dataset of steps_per_epoch * per_step elements."""
  first_epoch, skip = divmod(start_step, max(steps_per_epoch, 1))
  return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip * per_step)


def global_order(n, *, train, seed, shard, start_step, batch):
  """This process's (ids, positions) of each global batch, int64 [batch] each.

  Training: epoch e visits 0..n-1 in the permutation stateless_shuffle(seed, e), cut to
  whole global batches of B = count * batch; global batch k is its places [kB, (k+1)B),
  and the process shard = (index, count) reads rows [index * batch, (index + 1) * batch)
  of it. An example's position in the run (e * used + place) seeds its augmentation, so
  the batches do not depend on the number of processes and a run resumed at step N sees
  the batches an uninterrupted one saw. Evaluation: 0..n-1 once, the last global batch
  padded with id -1.

  Returns (tf.data.Dataset, this process's number of real, non-padding examples;
  None in training).
  """
  index, count = shard
  global_batch = batch * count

  def this_process_rows(ids):
    """[steps * global_batch] -> [steps, batch], this process's rows of each."""
    return tf.reshape(ids, [-1, count, batch])[:, index]

  if train:
    steps = n // global_batch
    used = steps * global_batch

    def epoch(e):
      ids = tf.random.experimental.stateless_shuffle(
          tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
      positions = e * used + tf.range(used, dtype=tf.int64)
      return tf.data.Dataset.from_tensor_slices(
          (this_process_rows(ids[:used]), this_process_rows(positions)))

    return from_step(epoch, steps, start_step), None
  padded = -(-n // global_batch) * global_batch
  ids = tf.concat([tf.range(n, dtype=tf.int64), -tf.ones([padded - n], tf.int64)], 0)
  num_real = int((np.arange(padded).reshape(-1, count, batch)[:, index] < n).sum())
  positions = tf.range(padded, dtype=tf.int64)
  return tf.data.Dataset.from_tensor_slices(
      (this_process_rows(ids), this_process_rows(positions))), num_real


# ------------------------------------------------------------------------- decoding --
# An example stream is a tf.data.Dataset of undecoded examples {'encoded' (bytes, or ''
# with 'path'), 'path', 'label', 'file_name', 'position' (int64, the augmentation's seed;
# -1 = padding)}.

def resize_mode(data):
  return data.get('resize_mode', 'shorter')  # Absent from configs saved before it existed.


def _encoded(ex):
  """The image's bytes: held in the example (TFDS, a cached folder) or read from its path."""
  return tf.cond(tf.strings.length(ex['encoded']) > 0,
                 lambda: ex['encoded'], lambda: tf.io.read_file(ex['path']))


def _train_example(ex, seed, image_size, data):
  """Random crop and flip of the 256 x 256 image, and a PCA lighting offset."""
  key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64),
                                                 ex['position'])
  crop_seed, light_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  if resize_mode(data) == 'warp':
    image = preprocessing.random_crop_and_flip(
        preprocessing.warp_resize(preprocessing.decode_rgb(_encoded(ex)), data.resize_size),
        image_size, crop_seed, flip=data.flip)
  else:
    image = preprocessing.decode_and_random_crop(
        _encoded(ex), image_size, crop_seed, resize_size=data.resize_size, flip=data.flip)
  lighting = (preprocessing.pca_lighting(light_seed, data.pca_lighting_std)
              if data.pca_lighting_std > 0 else tf.zeros([3], tf.float32))
  return {'image': image, 'lighting': lighting, 'label': ex['label']}


def eval_image(encoded, image_size, num_views, data):
  """An image's evaluation input: the centre crop, or the ten views, of its stored
  resize_size x resize_size version (shorter side or warp, config.data.resize_mode).

  Args:
    encoded: scalar tf.string, the file's bytes.
  Returns:
    uint8 [s, s, 3], or [10, s, s, 3] with num_views=10.
  """
  image = preprocessing.decode_rgb(encoded)
  if resize_mode(data) == 'warp':
    image = preprocessing.warp_resize(image, data.resize_size)
  else:
    image = preprocessing.resize_shorter_and_center_crop(image, data.resize_size)
  if num_views == 10:
    return preprocessing.ten_views(image, image_size)
  return preprocessing.center_crop(image, image_size)


def _eval_example(ex, image_size, num_views, data):
  """Centre crop, or the ten views, of the 256 x 256 image; padding is zeros, mask False."""
  shape = [num_views, image_size, image_size, 3] if num_views > 1 else [image_size] * 2 + [3]
  is_real = ex['position'] >= 0

  def decode():
    return eval_image(_encoded(ex), image_size, num_views, data)

  image = tf.cond(is_real, decode, lambda: tf.zeros(shape, tf.uint8))
  image = tf.ensure_shape(image, shape)
  return {'image': image, 'label': ex['label'], 'mask': is_real}


def decoded_batches(stream, data, *, train, seed, image_size, num_views, batch, total,
                    with_file_names, describe, skipped=()):
  """Batches of an example stream, each image decoded and augmented by tf.data.

  total: this process's real examples (evaluation), to notice a dropped tail; skipped:
  the files left out before the stream; describe(file name) says why one failed.
  """
  stream = stream.enumerate()  # 'index': place in this process's stream; pads come last.

  def decode(i, ex):
    out = (_train_example(ex, seed, image_size, data) if train
           else _eval_example(ex, image_size, num_views, data))
    out.update(index=tf.where(ex['position'] >= 0, i, -1), file_name=ex['file_name'])
    return out

  ds = stream.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  if not train:  # Refill what the decoder dropped: every process, the same batch count.
    pad = {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}
    pad['index'] = tf.constant(-1, tf.int64)
    length = int(stream.cardinality())
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(length)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(options(data))
  names = stream.map(lambda i, ex: ex['file_name'])
  return Batches(ds, names, data, with_file_names, total=None if train else total,
                 skipped=skipped, describe=describe)


def options(data):
  """The tf.data options of every source's batches."""
  opts = tf.data.Options()
  opts.deterministic = data.deterministic
  opts.autotune.enabled = True
  opts.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  opts.threading.max_intra_op_parallelism = 1
  return opts


# ---------------------------------------------------------------------------- batches --

class Batches:
  """Iterator of NumPy batches that notices examples the source dropped.

  Each element carries its place in this process's stream ('index'); a gap means an image
  failed to read or decode. on_bad_image='error' raises ValueError naming the file; 'skip'
  logs it and appends its name to `skipped` (which starts with the files the source left
  out before the stream). describe(name) says why, name as the stream holds it (bytes);
  remedy, what to do about it.
  """

  def __init__(self, ds, names, data, with_file_names, *, describe, total=None, skipped=(),
               remedy='Remove or replace the file'):
    self._it = iter(ds.as_numpy_iterator())
    self._names = names  # Dataset of file names, in stream order.
    self._data = data
    self._describe = describe
    self._remedy = remedy
    self._with_file_names = with_file_names
    self._total = total  # Stream length (evaluation), to notice a dropped tail.
    self._next_index = 0
    self.skipped = list(skipped)

  @property
  def num_examples(self):
    """Evaluation: this process's images, padding left out; None in training (endless)."""
    return self._total

  def __iter__(self):
    return self

  def _missing(self, lo, hi):
    if hi <= lo:
      return
    for name in self._names.skip(lo).take(hi - lo).as_numpy_iterator():
      error = self._describe(name)
      name = display_name(name)
      if self._data.on_bad_image != 'skip':
        raise ValueError(
            f'Cannot use image {name}: {error}. {self._remedy}, or set '
            "config.data.on_bad_image='skip' to skip bad images and count them.")
      logging.warning('Skipped an image that cannot be used: %s (%s)', name, error)
      self.skipped.append(name)

  def __next__(self):
    try:
      batch = next(self._it)
    except StopIteration:
      if self._total is not None:
        self._missing(self._next_index, self._total)
      raise
    index = batch.pop('index')
    seen = index[index >= 0]  # Places of the real (non-padding) examples.
    if len(seen):
      expected = np.arange(self._next_index, int(seen[-1]) + 1)
      if len(expected) != len(seen):
        self._missing_between(expected, seen)
      self._next_index = int(seen[-1]) + 1
    if not self._with_file_names:
      batch.pop('file_name', None)
    return batch

  def _missing_between(self, expected, seen):
    seen = set(seen.tolist())
    for i in expected:
      if int(i) not in seen:
        self._missing(int(i), int(i) + 1)
