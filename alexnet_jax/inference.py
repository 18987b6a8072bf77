"""Inference from a checkpoint: the one evaluation path of training, the CLIs and notebooks.

    model, params, config = inference.load(workdir)
    probs = inference.make_probabilities_fn(model, **inference.normalization(config))(
        params, images)  # uint8 [b, s, s, 3] or [b, views, s, s, 3] -> [b, classes]

`view_probabilities` (network, softmax) and `scores` (top-1 / top-5 right, cross-entropy)
are what every evaluation computes: train's model-parallel eval step calls them per
device; `evaluate` and `predict` through `make_probabilities_fn` (and `evaluate` a jitted
`scores`); `features` and the notebooks use `load` and `make_features_fn`.
"""

import os

import jax
from jax import lax
import jax.numpy as jnp

from alexnet_jax import checkpointing
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import pixels


def load(workdir, step=None, device=None):
  """(model, params, config) of the checkpoint in `workdir`; params on one device.

  Any checkpoint: written by training on any mesh, or by `convert`. A mean-image file
  named in the config by a relative path (as `convert` writes it) is taken relative to
  `workdir`.
  """
  config = checkpointing.saved_config(workdir, step)
  if config.data.mean not in ('channel', 'image') and not os.path.isabs(config.data.mean):
    config.data.mean = os.path.join(os.path.abspath(workdir), config.data.mean)
  model = models.AlexNet(**config.model)
  size = config.data.image_size
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0)}, jnp.zeros((1, size, size, 3)), train=False))['params']
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  params = checkpointing.restore_params(workdir, abstract, config, step)
  return model, params, config


def data_config(config, dataset=''):
  """The run's config.data, or a copy reading `dataset` instead: a folder root, records
  root (`prepare records`) or TFDS name."""
  data = config.data.copy_and_resolve_references()
  if dataset:
    data.dataset = input_pipeline.dataset_at(dataset)
    data.data_dir = dataset if os.path.isdir(dataset) else ''
  return data


def normalization(config, data=None):
  """{'mean', 'std', 'channel_order'}: how the checkpoint's network reads its images
  (pixels.normalize), the mean from `data` (a data config; default config.data). Configs
  saved before channel_order existed read 'rgb'."""
  data = config.data if data is None else data
  return {'mean': jnp.asarray(input_pipeline.mean(data, config.data.image_size)),
          'std': config.data.std, 'channel_order': config.data.get('channel_order', 'rgb')}


def view_probabilities(model, params, images, mean, std=1.0, channel_order='rgb'):
  """Softmax outputs float32 [*lead, classes] of uint8 images [*lead, s, s, 3], e.g.
  [b, s, s, 3] or [b, views, s, s, 3]: normalised, then the network (train=False)."""
  lead = images.shape[:-3]
  x = pixels.normalize(images.reshape((-1,) + images.shape[-3:]), None, mean,
                       std=std, channel_order=channel_order)
  logits = model.apply({'params': params}, x, train=False)
  return jax.nn.softmax(logits).reshape(lead + logits.shape[-1:])


def scores(probs, labels):
  """Per example, from probabilities [b, classes] and int labels [b]: 'top1_correct' and
  'top5_correct' (float32 0 or 1; top-5 is top-min(5, classes)) and 'loss' (the
  cross-entropy of `probs`)."""
  top5 = lax.top_k(probs, min(5, probs.shape[-1]))[1]
  right = jnp.take_along_axis(probs, labels[:, None], -1)[:, 0]
  return {'top1_correct': (jnp.argmax(probs, -1) == labels).astype(jnp.float32),
          'top5_correct': jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32),
          'loss': -jnp.log(right + 1e-12)}


def make_probabilities_fn(model, mean, std=1.0, channel_order='rgb'):
  """jitted (params, uint8 images [b, s, s, 3] or [b, views, s, s, 3]) -> float32
  [b, classes]: the softmax outputs, averaged over views (Section 4.1)."""

  @jax.jit
  def probabilities(params, images):
    probs = view_probabilities(model, params, images, mean, std, channel_order)
    return probs.mean(axis=1) if probs.ndim == 3 else probs

  return probabilities


def make_features_fn(model, layers, mean, std=1.0, channel_order='rgb'):
  """jitted (params, uint8 images [b, s, s, 3]) -> {layer: float32 [b, ...]} for layers of
  models.LAYERS ('logits' among them)."""
  unknown = set(layers) - set(models.LAYERS)
  if unknown:
    raise ValueError(f'Unknown layer(s) {sorted(unknown)}; choose from {models.LAYERS}.')

  @jax.jit
  def features(params, images):
    x = pixels.normalize(images, None, mean, std=std, channel_order=channel_order)
    feats = model.apply({'params': params}, x, train=False, return_features=True)
    return {k: feats[k].astype(jnp.float32) for k in layers}

  return features
