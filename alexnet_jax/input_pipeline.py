"""Datasets to batches: deterministic, sharded per process, augmented as the paper (tf.data).

Each format is a module that builds one data_source.Source, named in SOURCES:
  'folder'     root/<split>/<class>/<image> (folder_source.py).
  'records'    decoded 256 x 256 images in NumPy shards (records_source.py, records.py):
               the fast way to train.
  a TFDS name  any other name, e.g. 'imagenet2012' (tfds_source.py).

Batches are dicts of NumPy arrays, b = this process's share of the global batch.
Training: {'image': uint8 [b, s, s, 3] (random crop and flip), 'lighting': float32 [b, 3]
(PCA offsets, added by pixels.normalize), 'label': int32 [b]}. Evaluation: {'image': uint8
[b, s, s, 3] (centre) or [b, 10, s, s, 3] (the paper's ten views), 'label', 'mask': bool
[b]}; the last batch is padded with mask False, so every example counts once.

Order and augmentation are functions of the seed and each example's position
(data_source.global_order), so a run resumed at step N sees the batches an uninterrupted
one saw, whatever the number of processes; records give the batches of the folder they
were prepared from. TFDS datasets are read sequentially, each process its own even split.

An image that fails to read or decode (or a record that fails its checksum) is dropped in
training and masked in evaluation; config.data.on_bad_image='error' raises ValueError
naming it, 'skip' logs and counts it (`Batches.skipped`).
"""

import importlib
import os

import jax
import numpy as np

from alexnet_jax import pixels

# config.data.dataset -> its format's module; any other name is TFDS (TFDS_SOURCE). A
# directory is read by the first format that holds it, so 'folder' (which holds any) is
# last. Modules import (with TensorFlow) on first use: synthetic data needs no TensorFlow.
SOURCES = {
    'records': 'alexnet_jax.records_source',
    'folder': 'alexnet_jax.folder_source',
}
TFDS_SOURCE = 'alexnet_jax.tfds_source'

MEAN_IMAGE_FILE = 'mean_image.npy'
# ILSVRC-2012's 1000 classes in label order (sorted WordNet ids, as TFDS imagenet2012 and
# Caffe number them), each with its WordNet lemmas; the file says where it comes from.
IMAGENET_CLASSES_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'imagenet_classes.txt')


def _source(module):
  return importlib.import_module(module).SOURCE


def source(data):
  """The data_source.Source that reads config.data."""
  return _source(SOURCES.get(data.dataset, TFDS_SOURCE))


def dataset_at(path):
  """config.data.dataset for a directory (the first format that holds it), or `path`
  itself where it is not a directory (a TFDS name)."""
  if os.path.isdir(path):
    return next(name for name, module in SOURCES.items() if _source(module).holds(path))
  return path


def class_names(data, split=None):
  """Label i's name is class_names(data)[i]: config.data.class_names when set, else the
  dataset's own (for a folder, those of the train split, or of `split` where the root has
  none)."""
  if data.get('class_names'):
    return list(data.class_names)
  return source(data).class_names(data, split)


def imagenet_classes():
  """(WordNet ids, names): ILSVRC-2012's 1000 classes in label order."""
  with open(IMAGENET_CLASSES_FILE) as f:
    rows = [line.rstrip('\n').split(' ', 1) for line in f if not line.startswith('#')]
  return [r[0] for r in rows], [r[1] for r in rows]


def splits(data):
  """The split names the dataset has."""
  return source(data).splits(data)


def describe(data):
  """The dataset a config.data names, in words."""
  return source(data).describe(data)


def num_examples(data, split):
  """Examples in `split` (all processes together)."""
  return source(data).num_examples(data, split)


def mean_image_path(data):
  """Where `prepare mean` stores the mean image: beside the dataset."""
  return os.path.join(source(data).directory(data), MEAN_IMAGE_FILE)


def mean(data, image_size):
  """What normalize subtracts, RGB: float32 [3] per-channel (config.data.channel_mean),
  or [s, s, 3], the centre of a mean image ('image': `prepare mean`'s; or a .npy file)."""
  if data.mean == 'channel':
    return np.asarray(data.get('channel_mean', pixels.CHANNEL_MEAN), np.float32)
  if data.mean == 'image':
    path = mean_image_path(data)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"config.data.mean='image' needs the mean image {path}; compute it with "
          f'`python -m alexnet_jax.prepare mean --dataset={data.dataset} '
          f'--data_dir={data.data_dir} --split={data.train_split}`.')
  else:
    path = data.mean
    if not os.path.exists(path):  # checks.validate: a .npy file.
      raise ValueError(f"config.data.mean={data.mean!r}: use 'channel', 'image' or an "
                       'existing .npy file holding a [h, w, 3] RGB mean image.')
  image = np.load(path).astype(np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'The mean image {path} has shape {image.shape}; expected [h, w, 3].')
  return pixels.mean_for_crop(image, image_size)


def create_split(data, split, *, global_batch_size, train, seed=0, start_step=0,
                 image_size=224, num_views=1, shard=None, with_file_names=False):
  """An iterator of this process's batches (module docstring), as data_source.Batches.

  Args:
    data: config.data.
    split: split name ('train', 'validation', or a sub-folder name).
    global_batch_size: examples per step over all processes; this process gets
      global_batch_size // count of them.
    train: True: augmented, shuffled, endless, num_examples // global_batch_size steps an
      epoch; False: one pass, padded and masked.
    seed: of the order and the augmentation.
    start_step: the first training step's batch (resume).
    image_size: crop side.
    num_views: evaluation views, 1 (centre) or 10.
    shard: (index, count) of this process among the readers of different data: folders
      and records read rows [index * b, (index + 1) * b) of each global batch, TFDS its
      own even split; default (jax.process_index(), jax.process_count()).
    with_file_names: also yield 'file_name' (bytes [b]).
  """
  index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
  return source(data).create_split(
      data, split, train=train, seed=seed, start_step=start_step, image_size=image_size,
      num_views=num_views, batch=global_batch_size // count, shard=(index, count),
      with_file_names=with_file_names)
