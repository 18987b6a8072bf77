"""Datasets to batches: deterministic, sharded per process, augmented as the paper (tf.data).

Each format is a module that builds one data_source.Source, named in SOURCES:
  'folder'     root/<split>/<class>/<image> (folder_source.py).
  'records'    decoded 256 x 256 images in NumPy shards (records_source.py, records.py):
               the fast way to train.
  a TFDS name  any other name, e.g. 'imagenet2012' (tfds_source.py).

Batches are dicts of NumPy arrays. Training: {'image': uint8 [b, s, s, 3] (random crop and
flip of the 256 x 256 image), 'lighting': float32 [b, 3] (PCA lighting offsets, added on
the device by pixels.normalize), 'label': int32 [b]}. Evaluation: {'image': uint8
[b, s, s, 3] (centre) or [b, views, s, s, 3] (the paper's ten views), 'label', 'mask':
bool [b]}; the last batch is padded with mask False, so every example counts exactly once.
b is this process's share of the global batch.

Order and augmentation are functions of the seed and the example's position only
(data_source.global_order): a run started at step N sees exactly the batches an
uninterrupted run saw from step N, whatever the number of processes. Records give the
batches of the folder they were prepared from. TFDS datasets are read sequentially, each
process its own even split through a seeded shuffle buffer.

Bad images (`config.data.on_bad_image`): an image that fails to decode is dropped from the
stream; 'error' then raises ValueError naming the file, 'skip' logs it and counts it in
`Batches.skipped`. ImageNet's CMYK and grayscale JPEGs and its PNG named .JPEG decode to
RGB (preprocessing.decode_rgb). A record that cannot be read or fails its checksum is a
bad image too (dropped in training, masked in evaluation).
"""

import importlib
import os

import jax
import numpy as np

from alexnet_jax import pixels

# config.data.dataset -> the module of its format; any other name is a TFDS dataset
# (TFDS_SOURCE). A directory is read by the first format that holds it (features --data):
# 'folder' holds any, so it is last. A format's module (and TensorFlow with it) is imported
# when the format is first used, so synthetic data and the step run without TensorFlow.
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
  return source(data).create_split(
      data, split, train=train, seed=seed, start_step=start_step, image_size=image_size,
      num_views=num_views, batch=global_batch_size // count, shard=(index, count),
      with_file_names=with_file_names)
