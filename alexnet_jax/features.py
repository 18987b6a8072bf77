"""Feature extraction from a trained checkpoint, with the network's one definition.

    python -m alexnet_jax.features --workdir=CKPT_DIR --layer=fc7 --split=validation \
        --out=feats.npz [--data=FOLDER_OR_TFDS_NAME]

Restores the parameters a run saved in CKPT_DIR (whatever mesh wrote them) onto one
device, runs `models.AlexNet(..., return_features=True)` over a split's centre crops in
batches, and saves {layer: float32 [n, ...], 'label': int32 [n], 'file_name': str [n],
'class_names': str [classes]} as .npz. `--data` is an image folder
(root/<split>/<class>/*) or a TFDS name; by default the run's own dataset.
"""

import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from alexnet_jax import checkpointing
from alexnet_jax import console
from alexnet_jax import data_source
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import preprocessing


def load(workdir, step=None, device=None):
  """(model, params, config) of the checkpoint in `workdir`; params on one device.

  A mean-image file named in the config by a relative path (as `convert` writes it) is
  taken relative to `workdir`.
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


def make_extract_fn(model, layers, mean, std=1.0, channel_order='rgb'):
  """jitted (params, uint8 images [b, s, s, 3]) -> {layer: float32 [b, ...]}.

  Images are normalised as preprocessing.normalize (mean, std, channel_order).
  """
  unknown = set(layers) - set(models.LAYERS)
  if unknown:
    raise ValueError(f'Unknown layer(s) {sorted(unknown)}; choose from {models.LAYERS}.')

  @jax.jit
  def extract(params, images):
    x = preprocessing.normalize(images, None, mean, std=std, channel_order=channel_order)
    feats = model.apply({'params': params}, x, train=False, return_features=True)
    return {k: feats[k].astype(jnp.float32) for k in layers}

  return extract


def extract(extract_fn, params, batches, progress=True):
  """Runs over evaluation batches ({'image', 'label', 'mask', 'file_name'}).

  Returns {layer: [n, ...], 'label': [n], 'file_name': [n]}, padding rows dropped.
  """
  out = {}
  for batch in tqdm.tqdm(batches, disable=not progress, desc='features'):
    keep = batch['mask']
    feats = jax.device_get(extract_fn(params, batch['image']))
    feats.update(label=batch['label'],
                 file_name=np.array([data_source.display_name(n) for n in batch['file_name']]))
    for k, v in feats.items():
      out.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def data_config(config, data=''):
  """The run's config.data, or the same with another folder root, records root (`prepare
  records`) or TFDS dataset."""
  data_config = config.data.copy_and_resolve_references()
  if data:
    data_config.dataset = input_pipeline.dataset_at(data)
    data_config.data_dir = data if os.path.isdir(data) else ''
  return data_config


def extract_split(workdir, layers, split='validation', data='', batch_size=64, step=None,
                  progress=True):
  """Features of every image of `split`; see the module docstring."""
  model, params, config = load(workdir, step)
  data = data_config(config, data)
  size = config.data.image_size
  batches = input_pipeline.create_split(
      data, split, global_batch_size=batch_size, train=False, image_size=size,
      num_views=1, shard=(0, 1), with_file_names=True)
  fn = make_extract_fn(model, layers, jnp.asarray(input_pipeline.mean(data, size)),
                       config.data.std, channel_order(config))
  feats = extract(fn, params, batches, progress)
  feats['class_names'] = np.array(input_pipeline.class_names(data, split))
  return feats


def channel_order(config):
  """The channel order the checkpoint's network reads ('rgb' before the field existed)."""
  return config.data.get('channel_order', 'rgb')


FLAGS = flags.FLAGS


def main(argv):
  del argv
  feats = extract_split(FLAGS.workdir, FLAGS.layer, FLAGS.split, FLAGS.data,
                        FLAGS.batch_size, FLAGS.step)
  np.savez(FLAGS.out, **feats)
  print(f'Wrote {FLAGS.out}: ' + ', '.join(f'{k} {v.shape}' for k, v in feats.items()))


def define_flags():
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
  flags.DEFINE_list('layer', ['fc7'], f'Layer(s) to extract, from {models.LAYERS}.')
  flags.DEFINE_string('data', '', "Image folder root, records root or TFDS name; default: the "
                      "run's data.")
  flags.DEFINE_string('split', 'validation', 'Split (sub-folder) to extract.')
  flags.DEFINE_string('out', None, 'Output .npz file.')
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'out'])
  console.define_flags()
  app.run(console.app_main(main))
