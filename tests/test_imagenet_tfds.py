"""TFDS's real imagenet2012 builder on tiny tars in the official layout, read by our pipeline.

ILSVRC2012_img_train.tar holds one <wnid>.tar per class of <wnid>_<n>.JPEG files;
ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG files. TFDS labels validation
images by their sorted position in the full 50,000, so the tar holds the first five; the
expected labels are the public ground truth (Caffe's val.txt: 65, 970, 230, 809, 516) and,
for training, Imagenette's wnids' places among ImageNet's 1000 sorted wnids.
"""

import io
import os
import tarfile

import numpy as np
import pytest

from alexnet_jax import input_pipeline
from alexnet_jax import prepare
from configs import alexnet
from configs import sample

VAL_LABELS = {1: 65, 2: 970, 3: 230, 4: 809, 5: 516}
TRAIN_LABELS = {'n01440764': 0, 'n02102040': 217, 'n03888257': 701}


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  photos = os.path.join(sample.SAMPLE_DIR, 'train')
  images = {}
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as train:
    for wnid in TRAIN_LABELS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i, f in enumerate(sorted(os.listdir(os.path.join(photos, wnid)))[:3]):
          data = open(os.path.join(photos, wnid, f), 'rb').read()
          images[f'{wnid}_{i}.JPEG'] = data
          _add(t, f'{wnid}_{i}.JPEG', data)
      _add(train, f'{wnid}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in VAL_LABELS:
      _add(val, f'ILSVRC2012_val_{i:08d}.JPEG', images['n01440764_0.JPEG'])
  prepare.prepare_imagenet2012(str(root / 'tfds'), str(manual))
  data = alexnet.get_config().data
  data.data_dir = str(root / 'tfds')
  return data


def test_validation_labels_and_count(imagenet):
  assert input_pipeline.num_examples(imagenet, 'validation') == 5
  labels = {}
  for batch in input_pipeline.create_split(imagenet, 'validation', global_batch_size=4,
                                           train=False, with_file_names=True, shard=(0, 1)):
    assert batch['image'].shape == (4, 224, 224, 3)
    for name, label in zip(batch['file_name'][batch['mask']], batch['label'][batch['mask']]):
      labels[int(name.decode()[-13:-5])] = int(label)
  assert labels == VAL_LABELS


def test_train_labels_through_the_training_pipeline(imagenet):
  assert input_pipeline.num_examples(imagenet, 'train') == 9
  assert input_pipeline.class_names(imagenet)[0] == 'n01440764'
  batches = input_pipeline.create_split(imagenet, 'train', global_batch_size=3, train=True,
                                        with_file_names=True, shard=(0, 1))
  seen = {}
  for _ in range(3):  # One epoch.
    batch = next(batches)
    assert batch['image'].shape == (3, 224, 224, 3) and batch['image'].dtype == np.uint8
    for name, label in zip(batch['file_name'], batch['label']):
      seen[name.decode()] = int(label)
  assert len(seen) == 9
  assert all(TRAIN_LABELS[name.split('_')[0]] == label for name, label in seen.items())


def test_processes_read_disjoint_splits(imagenet):
  names = []
  for index in range(2):
    for batch in input_pipeline.create_split(imagenet, 'train', global_batch_size=2,
                                             train=False, with_file_names=True,
                                             shard=(index, 2)):
      names += list(batch['file_name'][batch['mask']])
  assert len(names) == len(set(names)) == 9


def test_records_written_from_tfds_hold_its_images_labels_and_names(imagenet, tmp_path):
  """`prepare records` from TFDS's imagenet2012: the evaluation batches read back equal
  the TFDS path's (same 256 x 256 images, labels, file names), and training reads them."""
  written = prepare.write_records('imagenet2012', imagenet.data_dir, str(tmp_path),
                                  ['train', 'validation'])
  assert written == {'train': 9, 'validation': 5}
  data = imagenet.copy_and_resolve_references()
  data.dataset, data.data_dir = 'records', str(tmp_path)
  assert input_pipeline.class_names(data) == input_pipeline.class_names(imagenet)
  assert input_pipeline.num_examples(data, 'train') == 9
  kw = dict(global_batch_size=4, train=False, with_file_names=True, shard=(0, 1))
  for views in (1, 10):
    want = list(input_pipeline.create_split(imagenet, 'validation', num_views=views, **kw))
    got = list(input_pipeline.create_split(data, 'validation', num_views=views, **kw))
    assert len(want) == len(got) == 2
    for a, b in zip(want, got):
      np.testing.assert_array_equal(a['mask'], b['mask'])
      np.testing.assert_array_equal(a['image'], b['image'])  # Padding: zeros in both.
      for k in ('label', 'file_name'):
        np.testing.assert_array_equal(a[k][a['mask']], b[k][b['mask']], err_msg=k)
  batches = input_pipeline.create_split(data, 'train', global_batch_size=3, train=True,
                                        with_file_names=True, shard=(0, 1))
  seen = {}
  for _ in range(3):  # One epoch.
    batch = next(batches)
    for name, label in zip(batch['file_name'], batch['label']):
      seen[name.decode()] = int(label)
  assert len(seen) == 9
  assert all(TRAIN_LABELS[name.split('_')[0]] == label for name, label in seen.items())
