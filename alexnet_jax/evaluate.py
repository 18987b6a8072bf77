"""Top-1 / top-5 error of any checkpoint on any image folder or TFDS split, as JSON.

    python -m alexnet_jax.evaluate --workdir=DIR [--data=FOLDER_OR_TFDS] \
        [--split=validation] [--views=1|10] [--real=real.json] [--out=FILE.json]

Restores the checkpoint in DIR onto one device (inference.load: trained on any mesh, or
written by `convert`) and runs the network over every image of the split, with the
run's own preprocessing (crop size, resize, mean, channel order; `input_pipeline`'s
evaluation path): the centre crop, or the paper's ten views with the softmax outputs
averaged, scored as training scores them (inference.scores). Labels are the checkpoint's
classes (config.data.class_names, e.g. ImageNet's WordNet ids, matched to class folder
names), so a folder that holds only the evaluated split works.

--real scores ImageNet-ReaL (Beyer et al. 2020) too: real.json is a list with one entry
per ILSVRC-2012 validation image in file-name order (ILSVRC2012_val_00000001.JPEG first),
each the list of labels judged correct for it. An image is right when its top-1 class is
in its list; images with an empty list are left out.
"""

import json
import os
import re

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  import jax
  import numpy as np
  # The image sources read with TensorFlow: it loads here, where its start-up lines drop.
  import tensorflow  # pylint: disable=unused-import

  from alexnet_jax import inference
  from alexnet_jax import input_pipeline

_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})')


def real_labels(path):
  """ReaL's labels: a list (per validation image, in file-name order) of label lists."""
  with open(path) as f:
    labels = json.load(f)
  if not isinstance(labels, list) or not all(isinstance(x, list) for x in labels):
    raise ValueError(f'{path} is not a ReaL label file: a JSON list of label lists, one '
                     'per ILSVRC-2012 validation image.')
  return labels


def _real_index(file_name, real):
  match = _VAL_NAME.search(os.path.basename(file_name))
  if not match or not 1 <= int(match.group(1)) <= len(real):
    raise ValueError(f'{file_name} is not an ILSVRC-2012 validation image '
                     f'(ILSVRC2012_val_<1..{len(real)}>.JPEG), which ReaL labels.')
  return int(match.group(1)) - 1


def evaluate(workdir, dataset='', split='validation', views=1, batch_size=64, real=None,
             step=None, progress=True):
  """Scores the checkpoint in `workdir` on `split` of `dataset`.

  Args:
    dataset: an image folder root, records root or TFDS name; '' for the run's own data.
    real: ReaL labels (`real_labels`), or None.
  Returns:
    {'top1_error', 'top5_error', 'loss' (cross-entropy of the averaged softmax), 'count',
    'views', 'split', 'dataset', 'data_dir'}, and with `real` 'real_top1_error' and
    'real_count' (images with a non-empty ReaL list).
  """
  model, params, config = inference.load(workdir, step)
  data_config = inference.data_config(config, dataset)
  size = config.data.image_size
  batches = input_pipeline.create_split(
      data_config, split, global_batch_size=batch_size, train=False, image_size=size,
      num_views=views, shard=(0, 1), with_file_names=real is not None)
  probabilities = inference.make_probabilities_fn(
      model, **inference.normalization(config, data_config))
  scores = jax.jit(inference.scores)
  top1 = top5 = loss = count = real_right = real_count = 0
  shown = console.Progress(batches.num_examples, 'evaluate', unit='images', enabled=progress)
  for batch in batches:
    keep = batch['mask']
    probs = probabilities(params, batch['image'])
    got = {k: np.asarray(v)[keep] for k, v in scores(probs, batch['label']).items()}
    top1 += int(got['top1_correct'].sum())
    top5 += int(got['top5_correct'].sum())
    loss += float(got['loss'].sum(dtype=np.float64))
    count += int(keep.sum())
    if real is not None:
      guesses = np.asarray(probs).argmax(-1)[keep]
      for name, guess in zip(batch['file_name'][keep], guesses):
        judged = real[_real_index(name.decode(), real)]
        if judged:
          real_right += int(guess in judged)
          real_count += 1
    shown.update(int(keep.sum()))
  shown.close()
  if not count:
    raise ValueError(f'No images in split {split!r}.')
  result = {'top1_error': 1.0 - top1 / count, 'top5_error': 1.0 - top5 / count,
            'loss': loss / count, 'count': count, 'views': views, 'split': split,
            'dataset': data_config.dataset, 'data_dir': data_config.data_dir}
  if real is not None:
    result.update(real_top1_error=1.0 - real_right / max(real_count, 1),
                  real_count=real_count)
  return result


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  real = real_labels(FLAGS.real) if FLAGS.real else None
  result = evaluate(FLAGS.workdir, FLAGS.data, FLAGS.split, FLAGS.views, FLAGS.batch_size,
                    real, FLAGS.step)
  result['workdir'] = FLAGS.workdir
  text = json.dumps(result, indent=2)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text + '\n')
  print(text)


def define_flags():
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string('workdir', None, 'Workdir holding checkpoints/ (training or convert).')
  flags.DEFINE_string('data', '', "Image folder root or TFDS name; default: the run's data.")
  flags.DEFINE_string('split', 'validation', 'Split (sub-folder) to evaluate.')
  flags.DEFINE_integer('views', 1, '1: the centre crop; 10: corners, centre and mirrors.')
  flags.DEFINE_string('real', '', 'ImageNet-ReaL real.json, to score ReaL top-1 error too.')
  flags.DEFINE_string('out', '', 'Also write the JSON here.')
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir'])
  console.define_flags()
  app.run(console.app_main(main))
