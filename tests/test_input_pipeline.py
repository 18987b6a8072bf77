"""The input pipeline on real JPEGs: the embedded sample and images made here."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import input_pipeline
from alexnet_jax import pixels
from alexnet_jax import prepare
from alexnet_jax import preprocessing
from configs import sample
from tests.conftest import REPO


def data_config(**overrides):
  data = sample.get_config().data
  data.update(overrides)
  return data


def take(batches, n):
  return [next(batches) for _ in range(n)]


def equal_batches(a, b):
  return all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def test_sample_is_committed_and_small():
  data = data_config()
  assert input_pipeline.class_names(data) == sorted(os.listdir(
      os.path.join(sample.SAMPLE_DIR, 'train')))
  assert len(input_pipeline.class_names(data)) == 10
  assert input_pipeline.num_examples(data, 'train') == 500
  assert input_pipeline.num_examples(data, 'validation') == 200
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(sample.SAMPLE_DIR) for f in files)
  assert size < 5.6e6


def test_train_batch_shapes_and_dtypes():
  batch = next(input_pipeline.create_split(
      data_config(), 'train', global_batch_size=8, train=True, shard=(0, 1)))
  assert batch['image'].shape == (8, 224, 224, 3) and batch['image'].dtype == np.uint8
  assert batch['lighting'].shape == (8, 3) and batch['lighting'].dtype == np.float32
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert set(batch) == {'image', 'lighting', 'label'}
  assert 0 <= batch['label'].min() and batch['label'].max() < 10
  # PCA lighting offsets: alpha ~ N(0, 0.1) along (19.7, 37.1, 121.8): a few units.
  assert 0.5 < np.abs(batch['lighting']).max() < 80


@pytest.mark.parametrize('views', [1, 10])
def test_eval_counts_every_example_once(views):
  """Eval covers all 200 held-out images once: the last batch is padded and masked."""
  data = data_config()
  names, labels, batches = [], [], 0
  for batch in input_pipeline.create_split(
      data, 'validation', global_batch_size=64 if views == 1 else 48, train=False,
      num_views=views, with_file_names=True, shard=(0, 1)):
    shape = (64,) if views == 1 else (48, 10)
    assert batch['image'].shape == shape + (224, 224, 3)
    assert batch['mask'].dtype == bool
    names += [n.decode() for n in batch['file_name'][batch['mask']]]
    labels += list(batch['label'][batch['mask']])
    assert not batch['image'][~batch['mask']].any()  # Padding is zeros.
    batches += 1
  assert batches == (4 if views == 1 else 5)
  assert len(names) == len(set(names)) == 200
  classes = input_pipeline.class_names(data)
  # Labels are the index of the image's class folder.
  assert [classes[l] for l in labels] == [n.split(os.sep)[-2] for n in names]
  assert set(names) == {os.path.join(sample.SAMPLE_DIR, 'validation', c, f)
                        for c in classes for f in os.listdir(
                            os.path.join(sample.SAMPLE_DIR, 'validation', c))}


def test_eval_views_are_the_documented_views():
  data = data_config()
  batch = next(input_pipeline.create_split(
      data, 'validation', global_batch_size=2, train=False, num_views=10,
      with_file_names=True, shard=(0, 1)))
  image = preprocessing.resize_shorter_and_center_crop(
      preprocessing.decode_rgb(tf.io.read_file(batch['file_name'][0].decode())), 256).numpy()
  corners = [(0, 0), (0, 32), (16, 16), (32, 0), (32, 32)]
  views = [image[y:y + 224, x:x + 224] for y, x in corners]
  views += [v[:, ::-1] for v in views]
  np.testing.assert_array_equal(batch['image'][0], np.stack(views))
  single = next(input_pipeline.create_split(
      data, 'validation', global_batch_size=2, train=False, num_views=1, shard=(0, 1)))
  np.testing.assert_array_equal(single['image'][0], views[2])


def test_warp_resize_mode_evaluates_and_trains_on_the_warped_image():
  """resize_mode='warp' (Caffe): the whole image at 256 x 256, then the crops."""
  data = data_config(resize_mode='warp')
  warped = lambda name: preprocessing.warp_resize(
      preprocessing.decode_rgb(tf.io.read_file(name.decode())), 256).numpy()
  batch = next(input_pipeline.create_split(
      data, 'validation', global_batch_size=2, train=False, image_size=227,
      with_file_names=True, shard=(0, 1)))
  np.testing.assert_array_equal(batch['image'][0], warped(batch['file_name'][0])[14:241, 14:241])
  batch = next(input_pipeline.create_split(
      data, 'train', global_batch_size=2, train=True, image_size=227, with_file_names=True,
      shard=(0, 1)))
  crop, image = batch['image'][0], warped(batch['file_name'][0])
  assert any(np.array_equal(view[y:y + 227, x:x + 227], crop)
             for view in (image, image[:, ::-1]) for y in range(30) for x in range(30))


def test_labels_from_config_class_names_and_a_folder_with_only_its_split(tmp_path):
  """A checkpoint's classes (config.data.class_names) name the labels; with none, a
  root without a train split takes the evaluated split's folders."""
  for split_class in ('b', 'd'):
    (tmp_path / 'validation' / split_class).mkdir(parents=True)
    tf.io.write_file(str(tmp_path / 'validation' / split_class / 'x.JPEG'),
                     tf.io.encode_jpeg(np.full((40, 40, 3), 9, np.uint8)))
  named = data_config(data_dir=str(tmp_path), class_names=('a', 'b', 'c', 'd'))
  assert input_pipeline.class_names(named, 'validation') == ['a', 'b', 'c', 'd']
  batch = next(input_pipeline.create_split(named, 'validation', global_batch_size=2,
                                           train=False, image_size=32, shard=(0, 1)))
  assert list(batch['label']) == [1, 3]
  own = data_config(data_dir=str(tmp_path))
  assert input_pipeline.class_names(own, 'validation') == ['b', 'd']
  assert input_pipeline.num_examples(own, 'validation') == 2
  with pytest.raises(ValueError, match=r"\['d'\] that config.data.class_names lacks"):
    input_pipeline.num_examples(data_config(data_dir=str(tmp_path), class_names=('b',)),
                                'validation')


def test_processes_share_eval_exactly_once_with_equal_batch_counts():
  data = data_config()
  seen, counts = [], []
  for index in range(3):
    batches = list(input_pipeline.create_split(
        data, 'validation', global_batch_size=48, train=False, with_file_names=True,
        shard=(index, 3)))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape[0] == 16
      seen += [n for n in b['file_name'][b['mask']]]
  assert len(set(counts)) == 1
  assert len(seen) == len(set(seen)) == 200


def test_train_crops_are_windows_of_the_256_image_or_their_mirror():
  batch = next(input_pipeline.create_split(
      data_config(), 'train', global_batch_size=4, train=True, with_file_names=True,
      shard=(0, 1)))
  for crop, name in zip(batch['image'][:2].astype(np.int32), batch['file_name'][:2]):
    image = preprocessing.resize_shorter_and_center_crop(
        preprocessing.decode_rgb(tf.io.read_file(name.decode())), 256).numpy()
    image = image.astype(np.int32)
    best = min(np.abs(view[y:y + 224, x:x + 224] - crop).max()
               for view in (image, image[:, ::-1]) for y in range(33) for x in range(33))
    assert best <= 1  # The fused decode-and-crop resamples to within 1 of the full path.


def test_deterministic_and_seeded():
  data = data_config()
  make = lambda seed: input_pipeline.create_split(
      data, 'train', global_batch_size=8, train=True, seed=seed, shard=(0, 1))
  a, b, c = take(make(0), 3), take(make(0), 3), take(make(1), 3)
  assert all(equal_batches(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_restart_at_step_n_equals_the_tail_of_a_full_run():
  """Epochs of 500 // 96 = 5 steps: resuming at 7 crosses into the second epoch."""
  data = data_config()
  full = take(input_pipeline.create_split(
      data, 'train', global_batch_size=96, train=True, seed=3, shard=(0, 1)), 10)
  tail = take(input_pipeline.create_split(
      data, 'train', global_batch_size=96, train=True, seed=3, start_step=7,
      shard=(0, 1)), 3)
  assert all(equal_batches(x, y) for x, y in zip(full[7:], tail))
  # An epoch visits distinct images: 5 steps x 96 = 480 of the 500.
  labels_epoch = np.concatenate([b['label'] for b in full[:5]])
  assert np.bincount(labels_epoch, minlength=10).min() >= 40


def test_global_batch_does_not_depend_on_the_number_of_processes():
  data = data_config()
  whole = next(input_pipeline.create_split(
      data, 'train', global_batch_size=12, train=True, seed=5, start_step=2, shard=(0, 1)))
  parts = [next(input_pipeline.create_split(
      data, 'train', global_batch_size=12, train=True, seed=5, start_step=2,
      shard=(i, 3))) for i in range(3)]
  for k in whole:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_cache_gives_the_same_batches_without_reading_files(tmp_path):
  root = tmp_path / 'copy'
  shutil.copytree(sample.SAMPLE_DIR, root)
  a = next(input_pipeline.create_split(data_config(data_dir=str(root), cache=False), 'train',
                                       global_batch_size=8, train=True, shard=(0, 1)))
  cached = input_pipeline.create_split(data_config(data_dir=str(root), cache=True), 'train',
                                       global_batch_size=8, train=True, shard=(0, 1))
  shutil.rmtree(root / 'train' / 'n01440764')  # Cached: the bytes are already in memory.
  b = next(cached)
  assert equal_batches(a, b)


def test_missing_folder_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare split-folder'):
    input_pipeline.num_examples(data_config(data_dir=str(tmp_path / 'nope')), 'train')


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
  data = data_config(dataset='imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='alexnet_jax.prepare imagenet2012'):
    input_pipeline.num_examples(data, 'train')


def test_mean_image_missing_and_present(tmp_path):
  root = tmp_path / 'data'
  for split in ('train', 'validation'):
    (root / split / 'a').mkdir(parents=True)
    tf.io.write_file(str(root / split / 'a' / 'x.JPEG'),
                     tf.io.encode_jpeg(np.full((300, 260, 3), 90, np.uint8)))
  data = data_config(data_dir=str(root), mean='image')
  with pytest.raises(FileNotFoundError, match='prepare mean'):
    input_pipeline.mean(data, 224)
  mean_image = np.random.default_rng(0).uniform(0, 255, (256, 256, 3)).astype(np.float32)
  np.save(root / input_pipeline.MEAN_IMAGE_FILE, mean_image)
  np.testing.assert_array_equal(input_pipeline.mean(data, 224), mean_image[16:240, 16:240])
  np.testing.assert_allclose(input_pipeline.mean(data_config(), 224),
                             pixels.CHANNEL_MEAN)
  # A mean-image file named in the config (what `convert --mean` writes), and channel means.
  data = data_config(mean=str(root / input_pipeline.MEAN_IMAGE_FILE))
  np.testing.assert_array_equal(input_pipeline.mean(data, 224), mean_image[16:240, 16:240])
  with pytest.raises(ValueError, match="config.data.mean='nowhere.npy'"):
    input_pipeline.mean(data_config(mean='nowhere.npy'), 224)
  np.testing.assert_allclose(input_pipeline.mean(data_config(channel_mean=(1., 2., 3.)), 224),
                             [1, 2, 3])


# ------------------------------------------------------------------------ bad images --

def _jpeg(array, **kwargs):
  return tf.io.encode_jpeg(array, **kwargs).numpy()


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
  """root/{train,validation}/<class>/: good images, ImageNet's odd formats and bad files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('bad')
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)

  def pil(mode, fmt):
    buf = io.BytesIO()
    Image.fromarray(photo).convert(mode).save(buf, fmt)
    return buf.getvalue()

  good = _jpeg(photo)
  files = {
      'good_0.JPEG': good, 'good_1.JPEG': good, 'good_2.JPEG': good,
      'cmyk.JPEG': pil('CMYK', 'JPEG'), 'gray.JPEG': pil('L', 'JPEG'),
      'png_named.JPEG': pil('RGB', 'PNG'),
      'huge.JPEG': _jpeg(np.full((10000, 10000, 3), 120, np.uint8), quality=50),
      'truncated.JPEG': good[:len(good) // 10], 'empty.JPEG': b'',
      'not_an_image.JPEG': b'This is a text file, not an image.\n' * 20,
  }
  for split in ('train', 'validation'):
    for name, data in files.items():
      _write(root / split / 'n00000001' / name, data)
  return root


BAD = {'truncated.JPEG', 'empty.JPEG', 'not_an_image.JPEG'}


def _eval_names(root, on_bad_image):
  data = data_config(data_dir=str(root), on_bad_image=on_bad_image)
  batches = input_pipeline.create_split(data, 'validation', global_batch_size=4,
                                        train=False, with_file_names=True, shard=(0, 1))
  out = []
  for b in batches:
    assert b['image'].shape == (4, 224, 224, 3)
    out += [os.path.basename(n.decode()) for n in b['file_name'][b['mask']]]
  return out, batches.skipped


def test_odd_formats_decode_and_bad_files_are_skipped_and_counted(bad_folder):
  names, skipped = _eval_names(bad_folder, 'skip')
  assert sorted(names) == sorted({'good_0.JPEG', 'good_1.JPEG', 'good_2.JPEG', 'cmyk.JPEG',
                                  'gray.JPEG', 'png_named.JPEG', 'huge.JPEG'})
  assert sorted(os.path.basename(s) for s in skipped) == sorted(BAD)


def test_bad_image_error_names_the_file(bad_folder):
  with pytest.raises(ValueError, match=r"Cannot use image .*(truncated|empty|not_an_image)"
                     r"\.JPEG.*on_bad_image='skip'"):
    _eval_names(bad_folder, 'error')


def test_training_skips_bad_images_and_keeps_full_batches(bad_folder):
  data = data_config(data_dir=str(bad_folder), on_bad_image='skip')
  batches = input_pipeline.create_split(data, 'train', global_batch_size=2, train=True,
                                        with_file_names=True, shard=(0, 1))
  names = set()
  for _ in range(10):  # Two epochs of 5 steps.
    b = next(batches)
    assert b['image'].shape == (2, 224, 224, 3)
    names |= {os.path.basename(n.decode()) for n in b['file_name']}
  assert not names & BAD
  assert {os.path.basename(s) for s in batches.skipped} == BAD
  data.on_bad_image = 'error'
  with pytest.raises(ValueError, match='Cannot use image'):
    take(input_pipeline.create_split(data, 'train', global_batch_size=2, train=True,
                                     shard=(0, 1)), 10)


@pytest.fixture(scope='module')
def odd_names(tmp_path_factory):
  """A folder whose files have names that are not UTF-8 (one good, one truncated) and a
  symbolic link that points at itself."""
  root = tmp_path_factory.mktemp('odd_names')
  good = _jpeg(np.random.default_rng(1).integers(0, 255, (260, 300, 3), dtype=np.uint8))
  for split in ('train', 'validation'):
    folder = os.fsencode(root / split / 'n00000001')
    os.makedirs(folder)
    for name, data in ((b'good.JPEG', good), (b'caf\xe9.JPEG', good),
                       (b'tronqu\xe9.JPEG', good[:len(good) // 10])):
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(data)
    os.symlink(b'loop.JPEG', os.path.join(folder, b'loop.JPEG'))
  return root


@pytest.mark.parametrize('cache', [False, True])
def test_odd_file_names_are_read_and_bad_ones_named_and_skipped(odd_names, cache):
  """Names that are not UTF-8 read like any other; a truncated one and a symlink loop are
  named (\\xNN for the undecodable bytes) and skipped under 'skip', in both cache modes."""
  data = data_config(data_dir=str(odd_names), cache=cache, on_bad_image='skip')
  batches = input_pipeline.create_split(data, 'validation', global_batch_size=2,
                                        train=False, with_file_names=True, shard=(0, 1))
  names = [os.path.basename(n) for b in batches for n in b['file_name'][b['mask']]]
  assert sorted(names) == [b'caf\xe9.JPEG', b'good.JPEG']
  skipped = sorted(os.path.basename(n) for n in batches.skipped)
  assert skipped == ['loop.JPEG', 'tronqu\\xe9.JPEG']
  data.on_bad_image = 'error'
  with pytest.raises(ValueError) as error:
    list(input_pipeline.create_split(data, 'validation', global_batch_size=2, train=False,
                                     shard=(0, 1)))
  message = str(error.value)
  assert 'loop.JPEG' in message or 'tronqu\\xe9.JPEG' in message
  assert 'TFDS' not in message and "on_bad_image='skip'" in message
  if 'loop.JPEG' in message:
    assert 'Too many levels of symbolic links' in message


def test_benchmark_fast_mode_writes_json(tmp_path):
  """benchmarks/input_pipeline.py runs (a few batches) and reports per-core throughput."""
  out = tmp_path / 'ip.json'
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.input_pipeline', '--fast',
                         f'--out={out}'], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['cores'] >= 1 and result['train_images_per_sec_per_core'] > 0
  assert result['train_images_per_sec_per_core'] * result['cores'] == pytest.approx(
      result['train_images_per_sec'])
  assert 'images/s/core' in proc.stdout
  # The recommended format is the headline; each format has a row with its storage.
  assert result['format'] == 'records'
  assert [r['format'] for r in result['rows']] == ['records', 'jpeg']
  assert result['rows'][0]['train_images_per_sec'] == result['train_images_per_sec']
  records, jpeg = result['rows']
  assert records['bytes_per_image'] > 256 * 256 * 3 > jpeg['bytes_per_image']
  assert all(r['train_images_per_cpu_second'] > 0 and r['eval_10_view_images_per_sec'] > 0
             for r in result['rows'])


def test_prepare_mean_stores_the_mean_image_the_pipeline_subtracts(tmp_path):
  """`prepare mean` over a folder's train split equals NumPy's mean of the 256 images."""
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]
  for i, image in enumerate(images):
    path = tmp_path / 'train' / f'c{i % 2}' / f'{i}.PNG'
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(image))
  path, mean_image = prepare.compute_mean('folder', str(tmp_path))
  np.testing.assert_allclose(mean_image, np.mean(images, axis=0), rtol=1e-6)
  data = data_config(data_dir=str(tmp_path), mean='image')
  assert path == input_pipeline.mean_image_path(data)
  np.testing.assert_allclose(input_pipeline.mean(data, 224), mean_image[16:240, 16:240])
