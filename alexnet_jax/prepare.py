"""Offline data preparation: one command per job, run once before training.

    # ImageNet (ILSVRC-2012) as TFDS 'imagenet2012', from the official tars in FOLDER:
    python -m alexnet_jax.prepare imagenet2012 --manual_dir=FOLDER --data_dir=~/tensorflow_datasets
    # The paper's stored format: every image resized to 256 x 256 (shorter side to 256,
    # centre crop), as small JPEGs in root/<split>/<class>/, cheaper to decode than the
    # originals; train on it with --config.data.dataset=folder --config.data.data_dir=OUT:
    python -m alexnet_jax.prepare resize --dataset=imagenet2012 --data_dir=~/tensorflow_datasets --out=OUT
    # The same 256 x 256 images decoded once, as records (records.py: 196,608 bytes an
    # image, no JPEG decoding in training; the fast way to train); from TFDS or a folder:
    python -m alexnet_jax.prepare records --dataset=imagenet2012 --data_dir=~/tensorflow_datasets --out=OUT
    # The mean image over the training split (config.data.mean='image'), stored beside it:
    python -m alexnet_jax.prepare mean --dataset=folder --data_dir=OUT
    # A folder of class folders -> root/train and root/validation (last fraction held out):
    python -m alexnet_jax.prepare split-folder --src=DIR --out=OUT --holdout=0.1
    # The embedded sample (data/sample), cut from Imagenette's tar of 224 x 224 JPEGs:
    python -m alexnet_jax.prepare sample --tar=imagenette224-train.tar --out=data/sample
"""

import os
import shutil
import tarfile

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  from absl import logging
  import ml_collections
  import numpy as np
  import tensorflow as tf

  from alexnet_jax import input_pipeline
  from alexnet_jax import pixels
  from alexnet_jax import preprocessing
  from alexnet_jax import records

COMMANDS = ('imagenet2012', 'resize', 'records', 'mean', 'split-folder', 'sample')
FLAGS = flags.FLAGS


def prepare_imagenet2012(data_dir, manual_dir):
  """Runs TFDS's own imagenet2012 preparation on the official tars in `manual_dir`.

  manual_dir holds ILSVRC2012_img_train.tar (one <wnid>.tar per class) and
  ILSVRC2012_img_val.tar (ILSVRC2012_val_<8 digits>.JPEG files).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  missing = [t for t in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
             if not os.path.exists(os.path.join(manual_dir, t))]
  if missing:
    raise FileNotFoundError(f'{manual_dir} lacks {missing}: download the ILSVRC-2012 tars '
                            'from image-net.org (login required) into it.')
  builder = tfds.builder('imagenet2012', data_dir=data_dir or None)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  return builder


def _data_config(dataset, data_dir):
  return ml_collections.ConfigDict(dict(
      dataset=dataset, data_dir=data_dir, train_split='train', on_bad_image='skip',
      resize_size=256, deterministic=True, cache=False, shuffle_buffer=1))


def _stored_images(data, split, size, job, batch=64):
  """(images uint8 [b, size, size, 3], labels, file names) of a split, bad files skipped;
  the progress of `job` (its name) over them, as each batch is done."""
  data.resize_size = size
  batches = input_pipeline.create_split(
      data, split, global_batch_size=batch, train=False, image_size=size,
      shard=(0, 1), with_file_names=True)
  progress = console.Progress(batches.num_examples, f'{job} {split}', unit='images')
  for b in batches:
    keep = b['mask']
    yield b['image'][keep], b['label'][keep], b['file_name'][keep]
    progress.update(int(keep.sum()))
  progress.close()
  if batches.skipped:
    logging.warning('%d image(s) of %s did not decode and were left out: %s',
                    len(batches.skipped), split, batches.skipped[:10])


def resize(dataset, data_dir, out, splits, size=256, quality=95):
  """Writes every image of `splits` at size x size to out/<split>/<class>/<name>.JPEG."""
  data = _data_config(dataset, data_dir)
  classes = input_pipeline.class_names(data)
  for split in splits:
    for images, labels, names in _stored_images(data, split, size, 'resize'):
      for image, label, name in zip(images, labels, names):
        folder = os.path.join(out, split, classes[label])
        os.makedirs(folder, exist_ok=True)
        stem = os.path.splitext(os.path.basename(os.fsdecode(name)))[0]
        tf.io.write_file(os.path.join(folder, stem + '.JPEG'),
                         tf.io.encode_jpeg(image, quality=quality))


def write_records(dataset, data_dir, out, splits, size=256, shard_size=1024,
                  resize_mode='shorter'):
  """Writes every image of `splits` at size x size as records (records.py) under `out`.

  The images are those `resize` would write (shorter side to `size`, centre crop, or
  the whole image warped to size x size with resize_mode='warp'; bad files skipped),
  decoded once; a folder's file names are kept as <class>/<file>.
  Returns {split: images written}.
  """
  data = _data_config(dataset, data_dir)
  data.resize_mode = resize_mode
  records.write_classes(out, input_pipeline.class_names(data))
  written = {}
  for split in splits:
    total = input_pipeline.num_examples(data, split)
    under = os.fsencode(os.path.join(input_pipeline.source(data).directory(data), split, ''))

    def batches():
      for images, labels, names in _stored_images(data, split, size, 'records'):
        # A file under the split's folder is named relative to it: <class>/<file>.
        names = [n[len(under):].replace(os.sep.encode(), b'/') if n.startswith(under)
                 else n for n in names]
        yield images, labels, names

    written[split] = records.write_split(out, split, batches(), total, shard_size,
                                         resize_mode)
  return written


def compute_mean(dataset, data_dir, split='train', size=256):
  """The mean size x size image over `split`; saved to input_pipeline.mean_image_path."""
  data = _data_config(dataset, data_dir)
  stored = input_pipeline.source(data).stored_size(data, split)
  if stored:  # At the size and resize mode the images are stored with.
    size, data.resize_mode = stored
  mean_image = pixels.mean_image(
      images for images, _, _ in _stored_images(data, split, size, 'mean'))
  path = input_pipeline.mean_image_path(data)
  np.save(path, mean_image)
  return path, mean_image


def split_folder(src, out, holdout=0.1):
  """src/<class>/* -> out/train/<class>/ and out/validation/<class>/ (copies).

  The last `holdout` fraction of each class, by sorted file name, is held out.
  """
  for name in sorted(os.listdir(src)):
    files = sorted(os.listdir(os.path.join(src, name)))
    n_eval = int(round(len(files) * holdout))
    for split, part in (('train', files[:len(files) - n_eval]),
                        ('validation', files[len(files) - n_eval:])):
      folder = os.path.join(out, split, name)
      os.makedirs(folder, exist_ok=True)
      for f in part:
        shutil.copyfile(os.path.join(src, name, f), os.path.join(folder, f))


def cut_sample(tar, out, train_per_class=50, eval_per_class=20, quality=50):
  """The embedded sample: per class, the first images (by name) for training and the
  last ones held out, re-encoded as JPEG at `quality` to keep the repo small."""
  with tarfile.open(tar) as t:
    members = {}
    for m in t.getmembers():
      parts = m.name.split('/')
      if m.isfile() and len(parts) == 4:
        members.setdefault(parts[2], []).append(m)
    for wnid, files in sorted(members.items()):
      files.sort(key=lambda m: m.name)
      for split, part in (('train', files[:train_per_class]),
                          ('validation', files[-eval_per_class:])):
        folder = os.path.join(out, split, wnid)
        os.makedirs(folder, exist_ok=True)
        for m in part:
          image = preprocessing.decode_rgb(t.extractfile(m).read())
          tf.io.write_file(os.path.join(folder, os.path.basename(m.name)),
                           tf.io.encode_jpeg(image, quality=quality, optimize_size=True))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Give one command: {", ".join(COMMANDS)} (see --helpfull).')
  command = argv[1]
  if command == 'imagenet2012':
    builder = prepare_imagenet2012(FLAGS.data_dir, FLAGS.manual_dir)
    print(f'Prepared {builder.info.full_name} in {builder.data_dir}.')
  elif command == 'resize':
    resize(FLAGS.dataset, FLAGS.data_dir, FLAGS.out, FLAGS.splits, FLAGS.size, FLAGS.quality)
  elif command == 'records':
    written = write_records(FLAGS.dataset, FLAGS.data_dir, FLAGS.out, FLAGS.splits,
                            FLAGS.size, FLAGS.shard_size, FLAGS.resize_mode)
    print(f'Wrote {written} records to {FLAGS.out}; train with '
          f'--config.data.dataset=records --config.data.data_dir={FLAGS.out}.')
  elif command == 'mean':
    path, _ = compute_mean(FLAGS.dataset, FLAGS.data_dir, FLAGS.split)
    print(f'Wrote {path}.')
  elif command == 'split-folder':
    split_folder(FLAGS.src, FLAGS.out, FLAGS.holdout)
  elif command == 'sample':
    cut_sample(FLAGS.tar, FLAGS.out, FLAGS.train_per_class,
               FLAGS.eval_per_class)


def define_flags():
  """Command-line flags, defined only when this module is the program."""
  flags.DEFINE_string('dataset', 'folder', "'folder', 'records' (mean) or a TFDS name "
                      '(resize, records, mean).')
  flags.DEFINE_string('data_dir', '', 'Folder root or TFDS data_dir (imagenet2012, resize, mean).')
  flags.DEFINE_string('manual_dir', '', 'Folder with the official ILSVRC2012 tars (imagenet2012).')
  flags.DEFINE_list('splits', ['train', 'validation'], 'Splits to write (resize, records).')
  flags.DEFINE_string('split', 'train', 'Split to average (mean).')
  flags.DEFINE_string('src', '', 'Folder of class folders (split-folder).')
  flags.DEFINE_string('tar', '', 'Imagenette tar (sample).')
  flags.DEFINE_string('out', '', 'Output folder (resize, records, split-folder, sample).')
  flags.DEFINE_integer('size', 256, 'Stored image side (resize, records).')
  flags.DEFINE_integer('shard_size', 1024, 'Images per file (records).')
  flags.DEFINE_enum('resize_mode', 'shorter', ['shorter', 'warp'],
                    'Shorter side to --size and centre crop, or warp (records).')
  flags.DEFINE_integer('quality', 95, 'JPEG quality of the images resize writes (sample '
                       'writes quality 50, to keep the repo small).')
  flags.DEFINE_float('holdout', 0.1, 'Fraction of each class held out (split-folder).')
  flags.DEFINE_integer('train_per_class', 50, 'Training images per class (sample).')
  flags.DEFINE_integer('eval_per_class', 20, 'Held-out images per class (sample).')


if __name__ == '__main__':
  define_flags()
  console.define_flags(cpu_settings=False)
  app.run(console.app_main(main))
