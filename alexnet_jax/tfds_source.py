"""config.data.dataset = a TFDS name (any name input_pipeline.SOURCES does not list), e.g.
'imagenet2012', prepared from the official tars by `python -m alexnet_jax.prepare
imagenet2012` (docs/data.md, "ImageNet"), in config.data.data_dir or TFDS's default.

TFDS datasets are read sequentially, so each process reads its own even split
(tfds.even_splits) through a seeded shuffle buffer; the images stay encoded until tf.data
decodes them.
"""

import tensorflow as tf

from alexnet_jax import data_source


def _builder(data):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(data.dataset, data_dir=data.data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {data.dataset!r} is not prepared in {builder.data_dir_root}. '
        f'TFDS cannot download ImageNet: put the official ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar in a folder and run `python -m alexnet_jax.prepare '
        f'imagenet2012 --manual_dir=FOLDER --data_dir={data.data_dir or "~/tensorflow_datasets"}` '
        '(docs/data.md, "ImageNet"), or set config.data.dataset and data_dir to a prepared '
        'dataset.')
  return builder


def num_examples(data, split):
  builder = _builder(data)
  if split not in builder.info.splits:
    raise ValueError(f'{data.dataset} has no split {split!r}; it has '
                     f'{list(builder.info.splits)}.')
  return builder.info.splits[split].num_examples


def create_split(data, split, *, train, seed, start_step, image_size, num_views, batch,
                 shard, with_file_names):
  """This process's even split of a TFDS split; eval padded to the largest split's batches
  (data_source.Source.create_split)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(data)
  index, count = shard
  splits = tfds.even_splits(split, n=count, drop_remainder=False)
  sizes = [builder.info.splits[s].num_examples for s in splits]
  base = builder.as_dataset(split=splits[index], shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
  has_name = 'file_name' in builder.info.features

  def convert(ex):
    return {'path': tf.constant(''), 'encoded': ex['image'],
            'label': tf.cast(ex['label'], tf.int32),
            'file_name': ex['file_name'] if has_name else tf.constant('')}

  base = base.map(convert)
  if data.cache:
    base = base.cache()
  if train:
    steps_per_epoch = sum(sizes) // (batch * count)
    per_epoch = steps_per_epoch * batch

    def epoch(e):
      return (base.shuffle(data.shuffle_buffer, seed=seed * 100003 + e)
              .take(per_epoch).enumerate(e * per_epoch))

    ds = data_source.from_step(epoch, steps_per_epoch, start_step, batch)
  else:
    padded = -(-max(sizes) // batch) * batch
    ds = base.enumerate().concatenate(tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), {'path': tf.constant(''), 'encoded': tf.constant(b''),
                                     'label': tf.constant(0, tf.int32),
                                     'file_name': tf.constant('')})).repeat()).take(padded)

  def with_position(position, ex):
    # Seeds differ per process: each reads a different split.
    ex['position'] = tf.where(position >= 0, position * count + index, -1)
    return ex

  return data_source.decoded_batches(
      ds.map(with_position), data, train=train, seed=seed, image_size=image_size,
      num_views=num_views, batch=batch, total=None if train else sizes[index],
      with_file_names=with_file_names,
      describe=lambda name: 'its bytes, stored in the TFDS dataset, do not decode')


SOURCE = data_source.Source(
    class_names=lambda data, split=None: list(_builder(data).info.features['label'].names),
    splits=lambda data: list(_builder(data).info.splits), num_examples=num_examples,
    describe=lambda data: f'TFDS {data.dataset!r} in {data.data_dir or "the default data_dir"}',
    directory=lambda data: _builder(data).data_dir, create_split=create_split)
