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

A file that cannot be used (unreadable, empty, not an image, truncated) gets one ERROR line
on stderr naming it, what is wrong and what to do; the other images are still ranked and
printed, and the command exits 1.
"""

import re
import sys

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  from absl import logging
  import numpy as np
  import tensorflow as tf

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


# The first bytes of the formats the decoder reads (WebP: RIFF, 4 bytes, WEBP).
_SIGNATURES = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'GIF8', 'GIF'),
               (b'BM', 'BMP'))


class ImageError(ValueError):
  """A file predict cannot use; the message names it, says what is wrong and what to do."""


def _image_format(head):
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WebP'
  return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def _op_message(error):
  """A TensorFlow op's error message without the op's name around it."""
  text = (error.message or type(error).__name__).splitlines()[0]
  return re.sub(r'\s*\[Op:\w+\].*$', '', re.sub(r'\{\{[^}]*\}\}\s*', '', text))


def read_image(path, size, views, data):
  """The file at `path` as the run evaluates it (data_source.eval_image): uint8
  [s, s, 3], or [10, s, s, 3] with views=10. A file that cannot be read, is empty, is not
  an image or does not decode (truncated, damaged) raises ImageError."""
  try:
    encoded = tf.io.read_file(path)
  except tf.errors.OpError as e:
    reason = _op_message(e).removeprefix(f'{path}; ')
    raise ImageError(f'{path}: cannot be read ({reason}); check the path and its '
                     'permissions.') from None
  length = int(tf.strings.length(encoded))
  if not length:
    raise ImageError(f'{path}: empty file (0 bytes); give the image itself (a copy or '
                     'download may have stopped before writing it).')
  try:
    return data_source.eval_image(encoded, size, views, data).numpy()
  except tf.errors.InvalidArgumentError as e:
    kind = _image_format(encoded.numpy()[:12])
    if kind is None:
      raise ImageError(f'{path}: not an image ({length} bytes that are not JPEG, PNG, GIF, '
                       'BMP or WebP); give an image file.') from None
    reason = _op_message(e).rstrip('.')
    raise ImageError(f'{path}: a truncated or damaged {kind} ({length} bytes; the decoder: '
                     f'{reason}); replace it with a complete copy.') from None


def predict(workdir, paths, top=5, views=1, batch_size=32, step=None, progress=False):
  """For each file in `paths`, in order: [(probability, class name, readable name)], best
  first; or, for a file that cannot be used, its ImageError (the others are still ranked)."""
  if views not in (1, 10):
    raise ValueError(f'views={views}: use 1 (centre crop) or 10 (the paper\'s views).')
  model, params, config = inference.load(workdir, step)
  size = config.data.image_size
  probabilities = inference.make_probabilities_fn(model, **inference.normalization(config))
  labels = class_labels(config)
  results = [None] * len(paths)
  shown = console.Progress(len(paths), 'predict', unit='images', enabled=progress)
  for start in range(0, len(paths), batch_size):
    images, rows = [], []
    for i in range(start, min(start + batch_size, len(paths))):
      try:
        images.append(read_image(paths[i], size, views, config.data))
        rows.append(i)
      except ImageError as e:
        results[i] = e
    if images:
      for i, probs in zip(rows, np.asarray(probabilities(params, np.stack(images)))):
        best = np.argsort(-probs, kind='stable')[:top]
        results[i] = [(float(probs[k]), *labels[k]) for k in best]
    shown.update(min(batch_size, len(paths) - start))
  shown.close()
  return results


FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give one or more image files.')
  with console.quiet_cxx_logs(not FLAGS.library_logs):  # TensorFlow's on each bad file.
    results = predict(FLAGS.workdir, paths, FLAGS.top, FLAGS.views, step=FLAGS.step,
                      progress=True)
  bad = 0
  for path, ranked in zip(paths, results):
    if isinstance(ranked, ImageError):
      bad += 1
      sys.stdout.flush()
      print(f'ERROR: {ranked}', file=sys.stderr, flush=True)
      continue
    print(path)
    for prob, name, readable in ranked:
      print(f'  {prob:.4f}  {name}  {readable}'.rstrip())
  if bad:
    sys.stdout.flush()
    print(f'ERROR: {bad} of {len(paths)} files could not be used (above); the other '
          f'{len(paths) - bad} are ranked above.', file=sys.stderr, flush=True)
    sys.exit(1)


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
