"""config.data.dataset='folder': images in root/<split>/<class>/<image>, root =
config.data.data_dir (Imagenette, the embedded sample in data/sample, the 256 x 256 copy
`prepare resize` writes, anyone's data).

Labels index config.data.class_names when it is set (a checkpoint's classes, e.g.
ImageNet's WordNet ids), else the sorted class folders of the train split, else those of
the split read. Examples come in data_source.global_order; each image is read (from
memory with config.data.cache) and decoded by tf.data.
"""

import os

from absl import logging
import tensorflow as tf

from alexnet_jax import data_source
from alexnet_jax import preprocessing

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.gif', '.webp')


def root(data):
  return os.path.abspath(os.path.expanduser(data.data_dir))


def _check_folder(data, path):
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Dataset folder {path} does not exist (config.data.dataset='folder', "
        f"data_dir={data.data_dir!r}). Expected root/<split>/<class>/<image>: point "
        'config.data.data_dir at such a root, or make one from a folder of class folders '
        'with `python -m alexnet_jax.prepare split-folder` (docs/data.md).')


def _subfolders(path):
  return sorted(d for d in os.listdir(path)
                if os.path.isdir(os.path.join(path, d)) and not d.startswith('.'))


def class_names(data, split=None):
  """The sorted class folders of the train split, or of `split` where the root has no
  train split (a folder holding only the evaluated split)."""
  path = os.path.join(root(data), data.train_split)
  if split is not None and not os.path.isdir(path):
    path = os.path.join(root(data), split)
  _check_folder(data, path)
  return _subfolders(path)


def splits(data):
  _check_folder(data, root(data))
  return _subfolders(root(data))


def _list_folder(data, split):
  """Sorted (paths, labels) of root/<split>/<class>/<image>; paths are bytes, so file names
  that are not UTF-8 are read like any other."""
  classes = list(data.class_names) if data.get('class_names') else class_names(data, split)
  path = os.path.join(root(data), split)
  _check_folder(data, path)
  unknown = sorted(set(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
                   - set(classes))
  if unknown:
    source = ('config.data.class_names' if data.get('class_names')
              else f'the train split {data.train_split!r}')
    raise ValueError(f'{path} has class folders {unknown[:5]} that {source} lacks; '
                     'labels come from there.')
  paths, labels = [], []
  extensions = tuple(e.encode() for e in IMAGE_EXTENSIONS)
  for label, name in enumerate(classes):
    folder = os.fsencode(os.path.join(path, name))
    if not os.path.isdir(folder):
      continue
    for f in sorted(os.listdir(folder)):
      if f.lower().endswith(extensions) and not f.startswith(b'.'):
        paths.append(os.path.join(folder, f))
        labels.append(label)
  if not paths:
    raise FileNotFoundError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) under {path}/<class>/.')
  return paths, labels


def num_examples(data, split):
  return len(_list_folder(data, split)[0])


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
      name = data_source.display_name(path)
      if on_bad_image != 'skip':
        raise ValueError(f'Cannot read image {name}: {e.strerror}. Remove or replace the '
                         "file, or set config.data.on_bad_image='skip' to skip bad images "
                         'and count them.') from e
      logging.warning('Skipped an image that cannot be read: %s (%s)', name, e.strerror)
      skipped.append(name)
  return kept, encoded, skipped


def _why_bad(path):
  """Why the file `path` (bytes) failed in the pipeline, found again outside tf.data: the
  OS's error for a file that cannot be read, else the decoder's message."""
  try:
    with open(path, 'rb') as f:
      encoded = f.read()
  except OSError as e:
    return f'cannot be read ({e.strerror})'
  try:
    preprocessing.decode_rgb(tf.constant(encoded))
    return 'the decoder failed on it inside the pipeline'
  except tf.errors.InvalidArgumentError as e:
    return e.message.splitlines()[0] if e.message else type(e).__name__


def create_split(data, split, *, train, seed, start_step, image_size, num_views, batch,
                 shard, with_file_names):
  """This process's batches of a folder split (data_source.Source.create_split)."""
  paths, labels = _list_folder(data, split)
  encoded_t, skipped = None, []
  if data.cache:  # All the split's bytes in memory: for small datasets.
    kept, encoded, skipped = _read_files(paths, data.on_bad_image)
    paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    encoded_t = tf.constant(encoded)
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels, tf.int32)

  def lookup(i, position):
    safe = tf.maximum(i, 0)
    path = tf.where(i >= 0, tf.gather(paths_t, safe), '')
    return {'path': path, 'file_name': path, 'label': tf.gather(labels_t, safe),
            'encoded': (tf.gather(encoded_t, safe) if encoded_t is not None
                        else tf.constant(b'')),
            'position': tf.where(i >= 0, position, tf.constant(-1, tf.int64))}

  order, num_real = data_source.global_order(
      len(paths), train=train, seed=seed, shard=shard, start_step=start_step, batch=batch)
  return data_source.decoded_batches(
      order.unbatch().map(lookup), data, train=train, seed=seed, image_size=image_size,
      num_views=num_views, batch=batch, total=num_real, with_file_names=with_file_names,
      describe=_why_bad, skipped=skipped)


SOURCE = data_source.Source(
    class_names=class_names, splits=splits, num_examples=num_examples,
    describe=lambda data: f'folder {root(data)}', directory=root, create_split=create_split,
    data_dir="the folder's root (root/<split>/<class>/<image>)", holds=os.path.isdir)
