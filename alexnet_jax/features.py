"""Feature extraction from a trained checkpoint, with the network's one definition.

    python -m alexnet_jax.features --workdir=CKPT_DIR --layer=fc7 --split=validation \
        --out=feats.npz [--data=FOLDER_OR_TFDS_NAME]

Restores the parameters a run saved in CKPT_DIR (whatever mesh wrote them) onto one
device (inference.load), runs inference.make_features_fn over a split's centre crops in
batches, and saves {layer: float32 [n, ...], 'label': int32 [n], 'file_name': str [n],
'class_names': str [classes]} as .npz. `--data` is an image folder
(root/<split>/<class>/*) or a TFDS name; by default the run's own dataset.
"""

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  import jax
  import numpy as np
  # The image sources read with TensorFlow: it loads here, where its start-up lines drop.
  import tensorflow  # pylint: disable=unused-import

  from alexnet_jax import data_source
  from alexnet_jax import inference
  from alexnet_jax import input_pipeline
  from alexnet_jax import models


def extract(features_fn, params, batches, progress=True):
  """Runs inference.make_features_fn's function over evaluation batches ({'image',
  'label', 'mask', 'file_name'}).

  Returns {layer: [n, ...], 'label': [n], 'file_name': [n]}, padding rows dropped.
  """
  out = {}
  shown = console.Progress(batches.num_examples, 'features', unit='images', enabled=progress)
  for batch in batches:
    keep = batch['mask']
    feats = jax.device_get(features_fn(params, batch['image']))
    feats.update(label=batch['label'],
                 file_name=np.array([data_source.display_name(n) for n in batch['file_name']]))
    for k, v in feats.items():
      out.setdefault(k, []).append(np.asarray(v)[keep])
    shown.update(int(keep.sum()))
  shown.close()
  return {k: np.concatenate(v) for k, v in out.items()}


def extract_split(workdir, layers, split='validation', dataset='', batch_size=64,
                  step=None, progress=True):
  """Features of every image of `split` of `dataset` (a folder root, records root or TFDS
  name; '' for the run's own data); see the module docstring."""
  model, params, config = inference.load(workdir, step)
  data_config = inference.data_config(config, dataset)
  batches = input_pipeline.create_split(
      data_config, split, global_batch_size=batch_size, train=False,
      image_size=config.data.image_size, num_views=1, shard=(0, 1), with_file_names=True)
  fn = inference.make_features_fn(model, layers,
                                  **inference.normalization(config, data_config))
  feats = extract(fn, params, batches, progress)
  feats['class_names'] = np.array(input_pipeline.class_names(data_config, split))
  return feats


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
