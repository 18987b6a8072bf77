"""Datasets to batches: deterministic, sharded per process, augmented as the paper (tf.data).

Sources (`config.data.dataset`):
  'folder'     root/<split>/<class>/<image>, root = config.data.data_dir: Imagenette, the
               embedded sample (data/sample), the 256 x 256 copy `prepare resize` writes,
               anyone's data. Labels index config.data.class_names when it is set (a
               checkpoint's classes, e.g. ImageNet's WordNet ids), else the sorted class
               folders of the train split, else those of the split read.
  a TFDS name  e.g. 'imagenet2012', prepared from the official tars by
               `python -m alexnet_jax.prepare imagenet2012` (docs/data.md, "ImageNet").
  'records'    decoded 256 x 256 images in NumPy shards (records.py) under data_dir,
               written from a folder or TFDS by `python -m alexnet_jax.prepare records`:
               the fast way to train (no JPEG decoding; benchmarks/NOTES.md, item 16).

Batches are dicts of NumPy arrays. Training: {'image': uint8 [b, s, s, 3] (random crop and
flip of the 256 x 256 image), 'lighting': float32 [b, 3] (PCA lighting offsets, added on
the device by preprocessing.normalize), 'label': int32 [b]}. Evaluation: {'image': uint8
[b, s, s, 3] (centre) or [b, views, s, s, 3] (the paper's ten views), 'label', 'mask':
bool [b]}; the last batch is padded with mask False, so every example counts exactly once.
b is this process's share of the global batch.

Order and augmentation are functions of the seed and the example's position only. For
folders, epoch e visits the examples in the permutation stateless_shuffle(seed, e) and
global batch k is positions [kB, (k+1)B) of it, each process reading its own rows of that
batch: the global batches are the same whatever the number of processes, and a run
started at step N sees exactly the batches an uninterrupted run saw from step N. Records
are read in the same order as the folder they were prepared from, with the same crops,
flips and lighting (drawn for a whole batch at once, stateless_random.py): the same
batches. TFDS datasets are read sequentially, so each process reads its own even split
(tfds.even_splits) through a seeded shuffle buffer.

Bad images (`config.data.on_bad_image`): an image that fails to decode is dropped from the
stream; 'error' then raises ValueError naming the file, 'skip' logs it and counts it in
`Batches.skipped`. ImageNet's CMYK and grayscale JPEGs and its PNG named .JPEG decode to
RGB (preprocessing.decode_rgb). A record that cannot be read or fails its checksum is a
bad image too (dropped in training, masked in evaluation).
"""

import os
import sys

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from alexnet_jax import preprocessing
from alexnet_jax import records
from alexnet_jax import stateless_random

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.gif', '.webp')
MEAN_IMAGE_FILE = 'mean_image.npy'
# ILSVRC-2012's 1000 classes in label order (sorted WordNet ids, as TFDS imagenet2012 and
# Caffe number them), each with its WordNet lemmas; the file says where it comes from.
IMAGENET_CLASSES_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'imagenet_classes.txt')


# ----------------------------------------------------------------------------- sources --

def _folder_root(data):
  return os.path.abspath(os.path.expanduser(data.data_dir))


def class_names(data, split=None):
  """Label i's name is class_names(data)[i].

  config.data.class_names when set; else, for folders, the sorted class folders of the
  train split, or of `split` where the root has no train split (a folder holding only
  the evaluated split); for TFDS, its label names.
  """
  if data.get('class_names'):
    return list(data.class_names)
  if data.dataset == 'folder':
    root = os.path.join(_folder_root(data), data.train_split)
    if split is not None and not os.path.isdir(root):
      root = os.path.join(_folder_root(data), split)
    _check_folder(data, root)
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
  if data.dataset == 'records':
    return records.read_classes(_records_root(data))
  return list(_tfds_builder(data).info.features['label'].names)


def imagenet_classes():
  """(WordNet ids, names): ILSVRC-2012's 1000 classes in label order."""
  with open(IMAGENET_CLASSES_FILE) as f:
    rows = [line.rstrip('\n').split(' ', 1) for line in f if not line.startswith('#')]
  return [r[0] for r in rows], [r[1] for r in rows]


def _check_folder(data, path):
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Dataset folder {path} does not exist (config.data.dataset='folder', "
        f"data_dir={data.data_dir!r}). Expected root/<split>/<class>/<image>: point "
        'config.data.data_dir at such a root, or make one from a folder of class folders '
        'with `python -m alexnet_jax.prepare split-folder` (docs/data.md).')


def _list_folder(data, split):
  """Sorted (paths, labels) of root/<split>/<class>/<image>; paths are bytes, so file names
  that are not UTF-8 are read like any other."""
  classes = class_names(data, split)
  root = os.path.join(_folder_root(data), split)
  _check_folder(data, root)
  unknown = sorted(set(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
                   - set(classes))
  if unknown:
    source = ('config.data.class_names' if data.get('class_names')
              else f'the train split {data.train_split!r}')
    raise ValueError(f'{root} has class folders {unknown[:5]} that {source} lacks; '
                     'labels come from there.')
  paths, labels = [], []
  extensions = tuple(e.encode() for e in IMAGE_EXTENSIONS)
  for label, name in enumerate(classes):
    folder = os.fsencode(os.path.join(root, name))
    if not os.path.isdir(folder):
      continue
    for f in sorted(os.listdir(folder)):
      if f.lower().endswith(extensions) and not f.startswith(b'.'):
        paths.append(os.path.join(folder, f))
        labels.append(label)
  if not paths:
    raise FileNotFoundError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {root}/<class>/.')
  return paths, labels


def display_name(name):
  """A file name (bytes or str) as printable text; bytes that are not UTF-8 as \\xNN."""
  return name.decode('utf-8', 'backslashreplace') if isinstance(name, bytes) else name


def splits(data):
  """The split names the dataset has (sub-folders of a folder root, or TFDS's)."""
  if data.dataset == 'folder':
    root = _folder_root(data)
    _check_folder(data, root)
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
  if data.dataset == 'records':
    root = _records_root(data)
    return sorted(d for d in os.listdir(root) if records.exists(root, d))
  return list(_tfds_builder(data).info.splits)


def describe(data):
  """The dataset a config.data names, in words."""
  if data.dataset == 'folder':
    return f'folder {_folder_root(data)}'
  if data.dataset == 'records':
    return f'records {_folder_root(data)}'
  return f'TFDS {data.dataset!r} in {data.data_dir or "the default data_dir"}'


def _read_files(paths, on_bad_image):
  """The bytes of each file (a cached folder); unreadable files raise or are left out.

  Returns (kept indices, their bytes, the names of the files left out).
  """
  kept, encoded, skipped = [], [], []
  for i, path in enumerate(paths):
    try:
      with open(path, 'rb') as f:
        encoded.append(f.read())
      kept.append(i)
    except OSError as e:
      name = display_name(path)
      if on_bad_image != 'skip':
        raise ValueError(f'Cannot read image {name}: {e.strerror}. Remove or replace the '
                         "file, or set config.data.on_bad_image='skip' to skip bad images "
                         'and count them.') from e
      logging.warning('Skipped an image that cannot be read: %s (%s)', name, e.strerror)
      skipped.append(name)
  return kept, encoded, skipped


def _tfds_builder(data):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(data.dataset, data_dir=data.data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {data.dataset!r} is not prepared in {builder.data_dir_root}. '
        f'TFDS cannot download ImageNet: put the official ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar in a folder and run `python -m alexnet_jax.prepare '
        f'imagenet2012 --manual_dir=FOLDER --data_dir={data.data_dir or "~/tensorflow_datasets"}` '
        '(docs/data.md, "ImageNet"), or set config.data.dataset and data_dir to a prepared '
        'dataset.')
  return builder


def _records_root(data, split=None):
  """ROOT of config.data.dataset='records', checked to hold a complete `split` (or, with
  split None, its class names)."""
  root = _folder_root(data) if data.data_dir else ''
  expected = (f'ROOT/{split}/{records.INDEX_FILE}' if split is not None
              else f'ROOT/{records.CLASSES_FILE}')
  if not root or not (records.exists(root, split) if split is not None
                      else os.path.exists(os.path.join(root, records.CLASSES_FILE))):
    raise FileNotFoundError(
        f"No records {'of split ' + repr(split) + ' ' if split else ''}in data_dir="
        f"{data.data_dir!r} (config.data.dataset='records'; expected {expected}). Write them "
        'once from a folder or a TFDS dataset with `python -m alexnet_jax.prepare records --dataset='
        'folder|imagenet2012 --data_dir=SOURCE --out=ROOT` (docs/data.md, "Records") and set '
        'config.data.data_dir=ROOT.')
  return root


def num_examples(data, split):
  """Examples in `split` (all processes together)."""
  if data.dataset == 'folder':
    return len(_list_folder(data, split)[0])
  if data.dataset == 'records':
    with np.load(os.path.join(_records_root(data, split), split, records.INDEX_FILE)) as index:
      return len(index['label'])
  builder = _tfds_builder(data)
  if split not in builder.info.splits:
    raise ValueError(f'{data.dataset} has no split {split!r}; it has '
                     f'{list(builder.info.splits)}.')
  return builder.info.splits[split].num_examples


def mean_image_path(data):
  """Where `prepare mean` stores the mean image: beside the dataset."""
  if data.dataset in ('folder', 'records'):
    return os.path.join(_folder_root(data), MEAN_IMAGE_FILE)
  return os.path.join(_tfds_builder(data).data_dir, MEAN_IMAGE_FILE)


def mean(data, image_size):
  """What normalize subtracts, RGB: float32 [3] per-channel (config.data.channel_mean),
  or [s, s, 3], the centre of a mean image ('image': `prepare mean`'s; or a .npy file)."""
  if data.mean == 'channel':
    return np.asarray(data.get('channel_mean', preprocessing.CHANNEL_MEAN), np.float32)
  if data.mean == 'image':
    path = mean_image_path(data)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"config.data.mean='image' needs the mean image {path}; compute it with "
          f'`python -m alexnet_jax.prepare mean --dataset={data.dataset} '
          f'--data_dir={data.data_dir} --split={data.train_split}`.')
  else:
    path = data.mean
    if not (path.endswith('.npy') and os.path.exists(path)):
      raise ValueError(f"config.data.mean={data.mean!r}: use 'channel', 'image' or an "
                       'existing .npy file holding a [h, w, 3] RGB mean image.')
  image = np.load(path).astype(np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'The mean image {path} has shape {image.shape}; expected [h, w, 3].')
  return preprocessing.mean_for_crop(image, image_size)


# ------------------------------------------------------------------- example streams --
# A stream is a tf.data.Dataset of undecoded examples {'encoded' (bytes, or '' with
# 'path'), 'label', 'file_name', 'position' (int64 for the augmentation seed, -1 = pad)}.

def _epoch_order(n, used, seed, e):
  """Epoch e's training order, shared by every source: the first `used` ids of the
  permutation stateless_shuffle(seed, e) of 0..n-1, and their positions in the run (the
  augmentation's seeds). int64 [used] each."""
  ids = tf.random.experimental.stateless_shuffle(
      tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), e]))
  return ids[:used], e * used + tf.range(used, dtype=tf.int64)


def _folder_stream(data, split, *, train, seed, rows, start_step, batch):
  """This process's examples of a folder split, in global-batch order (see module doc).

  rows: (row, rows): this process reads rows [row*b, (row+1)*b) of each global batch of
  rows*b examples (b = `batch`). Evaluation pads the last global batch to full size.
  """
  paths, labels = _list_folder(data, split)
  encoded_t, skipped = None, []
  if data.cache:  # All the split's bytes in memory: for small datasets.
    kept, encoded, skipped = _read_files(paths, data.on_bad_image)
    paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    encoded_t = tf.constant(encoded)
  n, (row, num_rows) = len(paths), rows
  global_batch = batch * num_rows
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels, tf.int32)

  def mine(ids):
    """This process's rows of each global batch, ids: [steps * global_batch]."""
    return tf.reshape(tf.reshape(ids, [-1, num_rows, batch])[:, row], [-1])

  def lookup_fn(i, position):
    safe = tf.maximum(i, 0)
    ex = {'path': tf.gather(paths_t, safe), 'label': tf.gather(labels_t, safe),
          'encoded': (tf.gather(encoded_t, safe) if encoded_t is not None
                      else tf.constant(b'')), 'position': position}
    ex['path'] = tf.where(i >= 0, ex['path'], '')
    ex['position'] = tf.where(i >= 0, position, tf.constant(-1, tf.int64))
    return ex

  if train:
    steps = n // global_batch
    first_epoch, skip = divmod(start_step, max(steps, 1))

    def epoch(e):
      ids, positions = _epoch_order(n, steps * global_batch, seed, e)
      return tf.data.Dataset.from_tensor_slices((mine(ids), mine(positions)))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip * batch)
  else:
    padded = -(-n // global_batch) * global_batch
    ids = tf.concat([tf.range(n, dtype=tf.int64),
                     -tf.ones([padded - n], tf.int64)], 0)
    ds = tf.data.Dataset.from_tensor_slices((mine(ids), mine(tf.range(padded, dtype=tf.int64))))
  real = None
  if not train:
    real = int((np.arange(padded).reshape(-1, num_rows, batch)[:, row] < n).sum())
  return ds.map(lookup_fn), real, skipped


def _tfds_stream(data, split, *, train, seed, shard, start_step, batch):
  """This process's even split of a TFDS split; eval padded to the largest split's batches."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(data)
  index, count = shard
  splits = tfds.even_splits(split, n=count, drop_remainder=False)
  sizes = [builder.info.splits[s].num_examples for s in splits]
  base = builder.as_dataset(split=splits[index], shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
  has_name = 'file_name' in builder.info.features

  def convert(ex):
    return {'path': tf.constant(''), 'encoded': ex['image'],
            'label': tf.cast(ex['label'], tf.int32),
            'file_name': ex['file_name'] if has_name else tf.constant('')}

  base = base.map(convert)
  if data.cache:
    base = base.cache()
  if train:
    steps_per_epoch = sum(sizes) // (batch * count)
    per_epoch = steps_per_epoch * batch
    first_epoch, skip = divmod(start_step, max(steps_per_epoch, 1))

    def epoch(e):
      return (base.shuffle(data.shuffle_buffer, seed=seed * 100003 + e)
              .take(per_epoch).enumerate(e * per_epoch))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip * batch)
  else:
    padded = -(-max(sizes) // batch) * batch
    ds = base.enumerate().concatenate(tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), {'path': tf.constant(''), 'encoded': tf.constant(b''),
                                     'label': tf.constant(0, tf.int32),
                                     'file_name': tf.constant('')})).repeat()).take(padded)

  def with_position(position, ex):
    # Seeds differ per process: each reads a different split.
    ex['position'] = tf.where(position >= 0, position * count + index, -1)
    return ex

  return ds.map(with_position), (None if train else sizes[index]), []


# --------------------------------------------------------------------------- decoding --

def _encoded(ex):
  """The image's bytes: held in the example (TFDS, a cached folder) or read from its path."""
  return tf.cond(tf.strings.length(ex['encoded']) > 0,
                 lambda: ex['encoded'], lambda: tf.io.read_file(ex['path']))


RESIZE_MODES = ('shorter', 'warp')


def _resize_mode(data):
  mode = data.get('resize_mode', 'shorter')  # Absent from configs saved before it existed.
  if mode not in RESIZE_MODES:
    raise ValueError(f'config.data.resize_mode={mode!r}: use one of {RESIZE_MODES}.')
  return mode


def _train_example(ex, seed, image_size, data):
  """Random crop and flip of the 256 x 256 image, and a PCA lighting offset."""
  key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64),
                                                 ex['position'])
  crop_seed, light_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  if _resize_mode(data) == 'warp':
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
  if _resize_mode(data) == 'warp':
    image = preprocessing.warp_resize(image, data.resize_size)
  else:
    image = preprocessing.resize_shorter_and_center_crop(image, data.resize_size)
  if num_views == 10:
    return preprocessing.ten_views(image, image_size)
  return preprocessing.center_crop(image, image_size)


def _eval_example(ex, image_size, num_views, data):
  """Centre crop, or the ten views, of the 256 x 256 image; padding is zeros, mask False."""
  shape = [num_views, image_size, image_size, 3] if num_views > 1 else [image_size] * 2 + [3]
  real = ex['position'] >= 0

  def decode():
    return eval_image(_encoded(ex), image_size, num_views, data)

  image = tf.cond(real, decode, lambda: tf.zeros(shape, tf.uint8))
  image = tf.ensure_shape(image, shape)
  return {'image': image, 'label': ex['label'], 'mask': real}


# ---------------------------------------------------------------------------- batches --

class Batches:
  """Iterator of NumPy batches that notices examples the decoder dropped.

  Each element carries its place in this process's stream ('index'); a gap means an image
  failed to read or decode. on_bad_image='error' raises ValueError naming the file; 'skip'
  logs it and appends its name to `skipped` (which starts with the files a cached folder
  could not read). describe(name) says why (default: read and decode the file again).
  """

  def __init__(self, ds, names, data, with_file_names, total=None, skipped=(),
               describe=None):
    self._it = iter(ds.as_numpy_iterator())
    self._names = names  # Dataset of file names, in stream order.
    self._data = data
    self._describe = describe
    self._with_file_names = with_file_names
    self._total = total  # Stream length (evaluation), to notice a dropped tail.
    self._next_index = 0
    self.skipped = list(skipped)

  def __iter__(self):
    return self

  def _missing(self, lo, hi):
    if hi <= lo:
      return
    for name in self._names.skip(lo).take(hi - lo).as_numpy_iterator():
      error = (self._describe(display_name(name)) if self._describe
               else _decode_error(name, self._data.dataset == 'folder'))
      name = display_name(name)
      if self._data.on_bad_image != 'skip':
        raise ValueError(
            f'Cannot use image {name}: {error}. Remove or replace the file, or set '
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
    real = index[index >= 0]
    if len(real):
      expected = np.arange(self._next_index, int(real[-1]) + 1)
      if len(expected) != len(real):
        self._missing_between(expected, real)
      self._next_index = int(real[-1]) + 1
    if not self._with_file_names:
      batch.pop('file_name', None)
    return batch

  def _missing_between(self, expected, seen):
    seen = set(seen.tolist())
    for i in expected:
      if int(i) not in seen:
        self._missing(int(i), int(i) + 1)


def _decode_error(name, in_folder):
  """Why the file `name` (bytes) failed in the pipeline, found again outside tf.data: the
  OS's error for a folder's file that cannot be read, else the decoder's message."""
  if not in_folder:
    return 'its bytes, stored in the TFDS dataset, do not decode'
  try:
    with open(name, 'rb') as f:
      encoded = f.read()
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  try:
    preprocessing.decode_rgb(tf.constant(encoded))
    return 'the decoder failed on it inside the pipeline'
  except tf.errors.InvalidArgumentError as e:
    return e.message.splitlines()[0] if e.message else type(e).__name__


def _options(data):
  options = tf.data.Options()
  options.deterministic = data.deterministic
  options.autotune.enabled = True
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  options.threading.max_intra_op_parallelism = 1
  return options


# ---------------------------------------------------------------------------- records --
# Records are read a batch at a time by one NumPy function (read, check, crop, mirror), and
# each example's augmentation is drawn for the whole batch at once: per-example tf.data
# work is what limits the other paths (benchmarks/NOTES.md, item 16).

def _global_order(n, *, train, seed, rows, start_step, batch):
  """This process's (ids, positions) of each global batch, int64 [batch] each, in the
  folder's order (_folder_stream): epoch e is the permutation stateless_shuffle(seed, e),
  global batch k its positions [kB, (k+1)B), this process its rows of each. Evaluation:
  0..n-1 once, the last global batch padded with id -1.

  Returns (tf.data.Dataset, the number of real examples of this process (evaluation)).
  """
  row, num_rows = rows
  global_batch = batch * num_rows

  def mine(ids):
    """This process's rows of each global batch: [steps * global_batch] -> [steps, batch]."""
    return tf.reshape(ids, [-1, num_rows, batch])[:, row]

  if train:
    steps = n // global_batch
    first_epoch, skip = divmod(start_step, steps)

    def epoch(e):
      ids, positions = _epoch_order(n, steps * global_batch, seed, e)
      return tf.data.Dataset.from_tensor_slices((mine(ids), mine(positions)))

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip), None
  padded = -(-n // global_batch) * global_batch
  ids = tf.concat([tf.range(n, dtype=tf.int64), -tf.ones([padded - n], tf.int64)], 0)
  real = int((np.arange(padded).reshape(-1, num_rows, batch)[:, row] < n).sum())
  return tf.data.Dataset.from_tensor_slices((mine(ids), mine(tf.range(padded,
                                                                     dtype=tf.int64)))), real


def train_augmentation(seed, positions, stored_size, image_size, data):
  """_train_example's random draws for a batch of positions, in NumPy, equal bit for bit.

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
        np.float32(data.pca_lighting_std) * np.asarray(preprocessing.PCA_STDDEVS, np.float32))
    vecs = np.asarray(preprocessing.PCA_EIGVECS, np.float32)
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
  """take() -> an aligned uint8 array of `shape` that nothing else references: one of
  those it returned before, once the batch made from it is gone (its tensor, and the
  NumPy arrays and device arrays made from it, hold a reference until then), else a new
  one. A new 19 MB array for every batch costs about 20 us an image in page faults
  (benchmarks/NOTES.md, item 16.8)."""
  pool, free = [], []  # free[i]: pool[i]'s reference count when nothing else holds it.

  def take():
    for i in range(len(pool)):
      if sys.getrefcount(pool[i]) == free[i]:
        return pool[i]
    pool.append(_aligned_empty(shape))
    free.append(sys.getrefcount(pool[-1]))  # Counted as above: the list, the argument.
    return pool[-1]

  return take


def _records_split(data, split, *, train, seed, start_step, image_size, num_views, batch,
                   rows, with_file_names):
  """create_split for config.data.dataset='records' (see create_split)."""
  root = _records_root(data, split)
  stored = records.open_split(root, split)
  if stored.size != data.resize_size:
    raise ValueError(f'The records in {stored.root} are stored at {stored.size} x '
                     f'{stored.size}; set config.data.resize_size={stored.size} (or prepare '
                     f'them at {data.resize_size}).')
  if stored.resize_mode != _resize_mode(data):
    raise ValueError(f'The records in {stored.root} were resized with resize_mode='
                     f'{stored.resize_mode!r}; set config.data.resize_mode='
                     f'{stored.resize_mode!r} (or prepare them with --resize_mode='
                     f'{_resize_mode(data)}).')
  labels = stored.label
  if data.get('class_names'):  # Labels index config.data.class_names, as for folders.
    ours, theirs = list(data.class_names), records.read_classes(root)
    unknown = sorted(set(theirs) - set(ours))
    if unknown:
      raise ValueError(f'The records in {root} have classes {unknown[:5]} that '
                       'config.data.class_names lacks; labels come from there.')
    labels = np.asarray([ours.index(c) for c in theirs], np.int32)[labels]
  if image_size > stored.size:
    raise ValueError(f'config.data.image_size={image_size} exceeds the stored '
                     f'{stored.size} x {stored.size}.')
  n = stored.num_examples
  if train and n < batch * rows[1]:
    raise ValueError(f'The global batch size {batch * rows[1]} exceeds the {n} examples '
                     f'of {split!r}.')
  order, real = _global_order(n, train=train, seed=seed, rows=rows, start_step=start_step,
                              batch=batch)
  order = order.enumerate()  # Batch k holds this process's stream places kB .. kB + B - 1.
  bad = {}  # File name -> why, filled by the reader; Batches names what went missing.

  def keep(ids, errors):
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
      ok = keep(ids, records.read_windows(stored, ids, corners, mirror, image_size, images))
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
      ok = keep(ids, records.read(stored, ids, whole)) & (ids >= 0)
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
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(data))
  names = order.flat_map(lambda k, ids_positions: tf.data.Dataset.from_tensor_slices(
      tf.gather(names_t, tf.maximum(ids_positions[0], 0))))
  return Batches(ds, names, data, with_file_names, total=None if train else real,
                 describe=lambda name: bad.get(name, 'the reader left it out'))


def create_split(data, split, *, global_batch_size, train, seed=0, start_step=0,
                 image_size=224, num_views=1, shard=None, with_file_names=False):
  """An iterator of this process's batches (module docstring), as `Batches`.

  Args:
    data: config.data.
    split: split name ('train', 'validation', or a sub-folder name).
    global_batch_size: examples per step over all processes; this process gets
      global_batch_size // shard count of them.
    train: True: augmented, shuffled, endless, epoch-aligned (num_examples //
      global_batch_size steps per epoch); False: one pass, padded and masked.
    seed: order and augmentation.
    start_step: the first training step's batch (resume).
    image_size: crop side.
    num_views: evaluation views, 1 (centre) or 10 (corners, centre and mirrors).
    shard: (index, count) of this process among the readers of different data;
      default (jax.process_index(), jax.process_count()).
    with_file_names: also yield 'file_name' (bytes [b]).
  """
  index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
  batch = global_batch_size // count
  if data.dataset == 'records':
    return _records_split(data, split, train=train, seed=seed, start_step=start_step,
                          image_size=image_size, num_views=num_views, batch=batch,
                          rows=(index, count), with_file_names=with_file_names)
  kwargs = dict(train=train, seed=seed, start_step=start_step, batch=batch)
  if data.dataset == 'folder':
    stream, real_total, skipped = _folder_stream(data, split, rows=(index, count), **kwargs)
    stream = stream.map(lambda ex: dict(ex, file_name=ex['path']))
  else:
    stream, real_total, skipped = _tfds_stream(data, split, shard=(index, count), **kwargs)
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
  ds = ds.with_options(_options(data))
  names = stream.map(lambda i, ex: ex['file_name'])
  return Batches(ds, names, data, with_file_names, total=None if train else real_total,
                 skipped=skipped)
