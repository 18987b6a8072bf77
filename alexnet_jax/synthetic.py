"""Synthetic data: fixed random batches made on the device (config.data.dataset='synthetic').

For measuring a machine's training speed with the real loop, logs and checkpoints and no
files, decoding or host-to-device copies, as PyTorch's ImageNet example's --dummy and
flax's fake-data config do. Training repeats one random batch made on the device
({'image': uint8 [b, s, s, 3], 'lighting': float32 [b, 3] with the pipeline's PCA
lighting spread, 'label': int32 [b] in [0, model.num_classes)}), with
data.synthetic_examples setting the epoch's length. Evaluation runs unchanged over
data.synthetic_eval_examples random examples (one random batch repeated, the last batch
masked as the pipeline's), so its error is chance's. Batches are global arrays split over
the mesh's 'data' axis, as partitioning.global_batch makes them.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from alexnet_jax import pixels

DATASET = 'synthetic'


def num_examples(data, split):
  """The examples of `split`: data.synthetic_examples for the train split, else
  data.synthetic_eval_examples."""
  return data.synthetic_examples if split == data.train_split else data.synthetic_eval_examples


def check(config):
  """check_data for synthetic data: no files to check. Returns the training examples."""
  if config.data.mean == 'image' or config.data.mean.endswith('.npy'):
    raise ValueError(f'config.data.mean={config.data.mean!r} needs a mean image; synthetic '
                     "data has none: use --config.data.mean=channel.")
  if config.batch_size > config.data.synthetic_examples:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than '
                     f'config.data.synthetic_examples={config.data.synthetic_examples}.')
  return config.data.synthetic_examples


class Batches:
  """An iterator of global batches, as input_pipeline.Batches (nothing is ever skipped)."""

  def __init__(self, batches):
    self._it = iter(batches)
    self.skipped = []

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)


def create_split(config, mesh, split, *, global_batch_size, train, seed=0, image_size=224,
                 num_views=1, **unused):
  """Batches of `split` (module docstring) on `mesh`: endless in training, one pass of
  num_examples(split) examples, padded and masked, in evaluation. Arguments as
  input_pipeline.create_split's; start_step and shard do not change fixed batches."""
  del unused
  b, s = global_batch_size, image_size
  rows = NamedSharding(mesh, P('data'))
  key = jax.random.fold_in(jax.random.key(seed), 0 if train else 1)
  image_shape = (b, s, s, 3) if train or num_views == 1 else (b, num_views, s, s, 3)

  def make(key):
    k_image, k_label, k_lighting = jax.random.split(key, 3)
    batch = {'image': jax.random.randint(k_image, image_shape, 0, 256, jnp.int32)
                      .astype(jnp.uint8),
             'label': jax.random.randint(k_label, (b,), 0, config.model.num_classes,
                                         jnp.int32)}
    if train:  # preprocessing.pca_lighting's offsets: eigvecs @ (alpha * stddevs).
      alpha = config.data.pca_lighting_std * jax.random.normal(k_lighting, (b, 3))
      eigvecs = jnp.asarray(pixels.PCA_EIGVECS, jnp.float32)
      weights = alpha * jnp.asarray(pixels.PCA_STDDEVS, jnp.float32)  # [b, 3]
      batch['lighting'] = (weights[:, None, :] * eigvecs[None]).sum(-1)
    return batch

  batch = jax.jit(make, out_shardings=rows)(key)
  if train:
    return Batches(iter(lambda: batch, None))
  n = num_examples(config.data, split)
  steps = math.ceil(n / b)
  full = jax.device_put(np.ones(b, bool), rows)
  last = jax.device_put(np.arange((steps - 1) * b, steps * b) < n, rows)
  return Batches(dict(batch, mask=last if i == steps - 1 else full) for i in range(steps))
