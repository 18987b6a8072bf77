"""The most probable classes of images, by name, from any checkpoint.

    python -m alexnet_jax.predict --workdir=DIR IMAGE [IMAGE ...] [--top=5] [--views=1|10]

Each image is preprocessed as the run evaluates (`data_source.eval_image`: resize,
centre crop or ten views, mean, channel order) and the softmax outputs (averaged over
views) are ranked. Classes are named by the checkpoint's config.data.class_names, or its
dataset's classes; WordNet ids of ImageNet classes also get their names
(data/imagenet_classes.txt). Prints, per image:

    IMAGE
      0.8312  n01440764  tench, Tinca tinca
      ...
"""

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from alexnet_jax import console
from alexnet_jax import data_source
from alexnet_jax import inference
from alexnet_jax import input_pipeline


def class_labels(config):
  """[(class name, readable name)] in label order; ImageNet WordNet ids get their names."""
  try:
    names = input_pipeline.class_names(config.data)
  except FileNotFoundError as e:  # The run's dataset is not on this machine.
    logging.warning('No class names (%s); numbering the classes.', e)
    names = [f'class {i}' for i in range(config.model.num_classes)]
  if len(names) != config.model.num_classes:
    raise ValueError(f'The checkpoint has {config.model.num_classes} classes but its data '
                     f'names {len(names)}.')
  readable = dict(zip(*input_pipeline.imagenet_classes()))
  return [(n, readable.get(n, '')) for n in names]


def predict(workdir, paths, top=5, views=1, batch_size=32, step=None):
  """For each image file in `paths`, [(probability, class name, readable name)], best first."""
  if views not in (1, 10):
    raise ValueError(f'views={views}: use 1 (centre crop) or 10 (the paper\'s views).')
  model, params, config = inference.load(workdir, step)
  size = config.data.image_size
  probabilities = inference.make_probabilities_fn(model, **inference.normalization(config))
  labels = class_labels(config)
  results = []
  for start in range(0, len(paths), batch_size):
    images = np.stack([data_source.eval_image(tf.io.read_file(p), size, views,
                                              config.data).numpy()
                       for p in paths[start:start + batch_size]])
    for probs in np.asarray(probabilities(params, images)):
      best = np.argsort(-probs, kind='stable')[:top]
      results.append([(float(probs[i]), *labels[i]) for i in best])
  return results


FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give one or more image files.')
  for path, ranked in zip(paths, predict(FLAGS.workdir, paths, FLAGS.top, FLAGS.views,
                                         step=FLAGS.step)):
    print(path)
    for prob, name, readable in ranked:
      print(f'  {prob:.4f}  {name}  {readable}'.rstrip())


def define_flags():
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string('workdir', None, 'Workdir holding checkpoints/ (training or convert).')
  flags.DEFINE_integer('top', 5, 'Classes to print per image.')
  flags.DEFINE_integer('views', 1, '1: the centre crop; 10: corners, centre and mirrors.')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir'])
  console.define_flags()
  app.run(console.app_main(main))
