"""Records (config.data.dataset='records'): the same batches as the folder they were
prepared from, deterministic, resumable, sharded per process, bad records named."""

import os
import shutil
import zlib

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import prepare
from alexnet_jax import records
from configs import sample
from tests.conftest import REPO
from tests.runs import metrics
from tests.runs import run_main

SAMPLE = str(REPO / 'data' / 'sample')


def data_config(**overrides):
  data = sample.get_config().data
  data.cache = False
  data.update(overrides)
  return data


def take(batches, n):
  return [next(batches) for _ in range(n)]


def train_batches(data, **kwargs):
  """One process's training batches of 6 from `data` (a data config)."""
  return input_pipeline.create_split(data, 'train', global_batch_size=6, train=True,
                                     shard=(0, 1), **kwargs)


def assert_batches_equal(a, b, keys=None):
  for k in keys or a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def pngs(tmp_path_factory):
  """A folder of 256 x 256 PNGs (lossless: the records hold exactly their pixels), 3
  classes, 11 training and 5 held-out images each, and its records in two shards."""
  root = tmp_path_factory.mktemp('pngs')
  rng = np.random.default_rng(0)
  for split, count in (('train', 11), ('validation', 5)):
    for c in ('cat', 'dog', 'eel'):
      (root / split / c).mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        tf.io.write_file(str(root / split / c / f'{i}.png'), tf.io.encode_png(image))
  out = tmp_path_factory.mktemp('pngs_records')
  written = prepare.write_records('folder', str(root), str(out), ['train', 'validation'],
                                  shard_size=20)
  assert written == {'train': 33, 'validation': 15}
  return root, out


def test_records_layout_and_contents(pngs):
  root, out = pngs
  assert records.read_classes(out) == ['cat', 'dog', 'eel']
  assert sorted(os.listdir(out / 'train')) == [
      'images-00000-of-00002.npy', 'images-00001-of-00002.npy', 'index.npz']
  shards = [np.load(out / 'train' / f'images-0000{k}-of-00002.npy') for k in (0, 1)]
  assert [s.shape for s in shards] == [(20, 256, 256, 3), (13, 256, 256, 3)]
  split = records.open_split(str(out), 'train')
  assert split.file_name[12] == b'dog/1.png' and split.label[12] == 1
  image = tf.io.decode_png(tf.io.read_file(str(root / 'train' / 'dog' / '1.png'))).numpy()
  np.testing.assert_array_equal(shards[0][12], image)
  assert split.checksum[12] == records.checksum(image)


def test_train_batches_equal_the_folders(pngs):
  """The same images, order, crops, flips and lighting as the folder path, across an
  epoch boundary (33 // 6 = 5 steps an epoch) and in both shards."""
  root, out = pngs
  folder = input_pipeline.create_split(data_config(data_dir=str(root)), 'train',
                                       global_batch_size=6, train=True, seed=4,
                                       with_file_names=True, shard=(0, 1))
  recs = input_pipeline.create_split(data_config(dataset='records', data_dir=str(out)),
                                     'train', global_batch_size=6, train=True, seed=4,
                                     with_file_names=True, shard=(0, 1))
  for a, b in zip(take(folder, 7), take(recs, 7)):
    assert set(a) == set(b) == {'image', 'lighting', 'label', 'file_name'}
    assert b['image'].dtype == np.uint8 and b['lighting'].dtype == np.float32
    assert b['label'].dtype == np.int32
    assert_batches_equal(a, b, ['image', 'lighting', 'label'])
    assert [n.decode().split(os.sep)[-2:] for n in a['file_name']] == [
        n.decode().split('/') for n in b['file_name']]


@pytest.mark.parametrize('views', [1, 10])
def test_eval_batches_equal_the_folders(pngs, views):
  root, out = pngs
  kw = dict(global_batch_size=4, train=False, num_views=views, shard=(0, 1))
  folder = list(input_pipeline.create_split(data_config(data_dir=str(root)), 'validation',
                                            **kw))
  recs = list(input_pipeline.create_split(
      data_config(dataset='records', data_dir=str(out)), 'validation', **kw))
  assert len(folder) == len(recs) == 4  # 15 images, the last batch padded and masked.
  for a, b in zip(folder, recs):
    assert_batches_equal(a, b)


def test_jpegs_of_the_sample_give_the_same_batches(tmp_path):
  """Records of a folder of 256 x 256 JPEGs (`prepare resize`) hold the pixels the JPEG
  path decodes: the same training batches."""
  jpegs, out = tmp_path / 'jpegs', tmp_path / 'records'
  prepare.resize('folder', SAMPLE, str(jpegs), ['train'])
  prepare.write_records('folder', str(jpegs), str(out), ['train'])
  kw = dict(global_batch_size=32, train=True, seed=1, start_step=14, shard=(0, 1))
  a = take(input_pipeline.create_split(data_config(data_dir=str(jpegs)), 'train', **kw), 2)
  b = take(input_pipeline.create_split(data_config(dataset='records', data_dir=str(out)),
                                       'train', **kw), 2)
  for x, y in zip(a, b):
    assert_batches_equal(x, y)


def test_resume_at_step_n_equals_the_tail_of_a_full_run(pngs):
  _, out = pngs
  data = data_config(dataset='records', data_dir=str(out))
  make = lambda start: input_pipeline.create_split(
      data, 'train', global_batch_size=6, train=True, seed=3, start_step=start,
      shard=(0, 1))
  full = take(make(0), 9)
  for x, y in zip(full[7:], take(make(7), 2)):  # Step 7 is in the second epoch.
    assert_batches_equal(x, y)
  for x, y in zip(full[:2], take(make(0), 2)):
    assert_batches_equal(x, y)
  other_seed = next(input_pipeline.create_split(data, 'train', global_batch_size=6,
                                                train=True, seed=4, shard=(0, 1)))
  assert not np.array_equal(full[0]['image'], other_seed['image'])


def test_processes_read_their_rows_of_the_same_global_batches(pngs):
  _, out = pngs
  data = data_config(dataset='records', data_dir=str(out))
  kw = dict(global_batch_size=6, train=True, seed=5, start_step=6)
  whole = take(input_pipeline.create_split(data, 'train', shard=(0, 1), **kw), 2)
  parts = [take(input_pipeline.create_split(data, 'train', shard=(i, 3), **kw), 2)
           for i in range(3)]
  for step in range(2):
    for k in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([p[step][k] for p in parts]), whole[step][k])
  seen = []
  for i in range(2):  # Evaluation: each image once over the processes.
    for b in input_pipeline.create_split(data, 'validation', global_batch_size=4,
                                         train=False, shard=(i, 2), with_file_names=True):
      assert b['image'].shape[0] == 2
      seen += list(b['file_name'][b['mask']])
  assert len(seen) == len(set(seen)) == 15


def test_prepared_from_the_sample_crops_match_its_images(tmp_path):
  """From the sample's photographs of any size: each crop is a window of the stored
  256 x 256 image, the one the folder path resamples (to within 1)."""
  prepare.write_records('folder', SAMPLE, str(tmp_path), ['train'])
  kw = dict(global_batch_size=8, train=True, seed=2, shard=(0, 1))
  a = next(input_pipeline.create_split(data_config(data_dir=SAMPLE), 'train', **kw))
  b = next(input_pipeline.create_split(data_config(dataset='records',
                                                   data_dir=str(tmp_path)), 'train', **kw))
  assert_batches_equal(a, b, ['label', 'lighting'])
  assert np.abs(a['image'].astype(int) - b['image']).max() <= 1


def test_mean_image_of_records_equals_the_folders(pngs):
  root, out = pngs
  _, from_folder = prepare.compute_mean('folder', str(root))
  path, from_records = prepare.compute_mean('records', str(out))
  assert path == str(out / input_pipeline.MEAN_IMAGE_FILE)
  np.testing.assert_allclose(from_records, from_folder, rtol=1e-6)


def test_missing_records_say_how_to_prepare(tmp_path):
  data = data_config(dataset='records', data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match='prepare records'):
    input_pipeline.num_examples(data, 'train')


def test_stored_size_must_match_resize_size(pngs):
  with pytest.raises(ValueError, match='resize_size=256'):
    input_pipeline.create_split(
        data_config(dataset='records', data_dir=str(pngs[1]), resize_size=224), 'train',
        global_batch_size=4, train=True, image_size=224, shard=(0, 1))


# ----------------------------------------------------------------------- bad records --

@pytest.fixture
def damaged(pngs, tmp_path):
  """A copy of the records with record 3 (cat/2.png: files sort as 0, 1, 10, 2, ...)
  corrupted in one byte, and the second shard cut short in its record 27 (7 of the
  shard), so records 27-32 are unreadable."""
  out = tmp_path / 'damaged'
  shutil.copytree(pngs[1], out)
  split = records.open_split(str(out), 'train')
  path, offset = split.where(3)
  with open(path, 'r+b') as f:
    f.seek(offset + 1000)
    byte = f.read(1)
    f.seek(offset + 1000)
    f.write(bytes([byte[0] ^ 0x10]))
  path, offset = split.where(27)
  os.truncate(path, offset + 5000)
  bad = {split.name(i) for i in [3] + list(range(27, 33))}
  return out, bad


def test_bad_records_are_skipped_and_batches_stay_full(damaged):
  out, bad = damaged
  data = data_config(dataset='records', data_dir=str(out), on_bad_image='skip')
  batches = train_batches(data, with_file_names=True)
  seen = set()
  for b in take(batches, 10):  # Two epochs: every record is read twice.
    assert b['image'].shape == (6, 224, 224, 3)
    seen |= {n.decode() for n in b['file_name']}
  assert not seen & bad
  assert set(batches.skipped) == bad
  assert len(seen) == 33 - len(bad)


def test_bad_record_stops_training_naming_it(damaged):
  out, _ = damaged
  data = data_config(dataset='records', data_dir=str(out), on_bad_image='error')
  with pytest.raises(ValueError, match=r'Cannot use image (cat/2\.png: record 3 of '
                     r'.*images-00000-of-00002\.npy is corrupt: checksum|eel/\d+\.png: '
                     r'record \d of .*images-00001-of-00002\.npy cannot be read: the file '
                     r'ends \d+ bytes into it \(truncated\))'):
    take(train_batches(data), 6)


def test_bad_records_in_evaluation_are_masked_and_reported(pngs, tmp_path):
  out = tmp_path / 'damaged'
  shutil.copytree(pngs[1], out)
  os.remove(out / 'validation' / 'images-00000-of-00001.npy')
  data = data_config(dataset='records', data_dir=str(out), on_bad_image='skip')
  batches = input_pipeline.create_split(data, 'validation', global_batch_size=4,
                                        train=False, shard=(0, 1))
  masks = [b['mask'] for b in batches]
  assert len(masks) == 4 and not np.concatenate(masks).any()
  assert len(batches.skipped) == 15


def test_main_trains_on_records(tmp_path):
  """`main` reads records through config.data, as it reads the folder they came from."""
  out = tmp_path / 'records'
  prepare.write_records('folder', SAMPLE, str(out), ['train', 'validation'], size=76)
  run_main(tmp_path / 'run', '--config.data.dataset=records',
           f'--config.data.data_dir={out}', '--config.eval_every_steps=2', steps=2)
  lines = metrics(tmp_path / 'run')
  assert [l['step'] for l in lines if 'loss' in l] == [2]
  assert [l['step'] for l in lines if 'eval_top1_error' in l] == [2]
  assert all(np.isfinite(l['loss']) for l in lines if 'loss' in l)


def test_labels_follow_config_class_names(pngs):
  """With config.data.class_names (a checkpoint's classes), labels index those, as for
  folders."""
  root, out = pngs
  kw = dict(global_batch_size=4, train=False, with_file_names=True, shard=(0, 1))
  names = ['eel', 'bat', 'cat', 'dog']
  folder = list(input_pipeline.create_split(
      data_config(data_dir=str(root), class_names=names), 'validation', **kw))
  recs = list(input_pipeline.create_split(
      data_config(dataset='records', data_dir=str(out), class_names=names), 'validation',
      **kw))
  labels = lambda batches, name: {name(n): int(l) for b in batches
                                  for n, l in zip(b['file_name'][b['mask']],
                                                  b['label'][b['mask']])}
  got = labels(recs, bytes.decode)
  assert got == labels(folder, lambda n: '/'.join(n.decode().split(os.sep)[-2:]))
  assert {got['cat/0.png'], got['dog/0.png'], got['eel/0.png']} == {2, 3, 0}


def test_resize_mode_is_kept_and_checked(pngs, tmp_path):
  root, _ = pngs
  prepare.write_records('folder', str(root), str(tmp_path), ['validation'], size=64,
                        resize_mode='warp')
  assert records.open_split(str(tmp_path), 'validation').resize_mode == 'warp'
  data = data_config(dataset='records', data_dir=str(tmp_path), resize_size=64)
  with pytest.raises(ValueError, match="resize_mode='warp'"):
    input_pipeline.create_split(data, 'validation', global_batch_size=4, train=False,
                                image_size=56, shard=(0, 1))
  data.resize_mode = 'warp'
  batch = next(input_pipeline.create_split(data, 'validation', global_batch_size=4,
                                           train=False, image_size=56, shard=(0, 1)))
  assert batch['image'].shape == (4, 56, 56, 3)


def test_features_data_reads_records_a_folder_or_a_tfds_name(pngs):
  """features and evaluate --data (inference.data_config): a records root is read as
  records, any other directory as a folder (the first format of input_pipeline.SOURCES
  that holds it), a name as a TFDS dataset."""
  root, out = pngs
  config = sample.get_config()
  for data, expected in ((str(out), ('records', str(out))), (str(root), ('folder', str(root))),
                         ('imagenet2012', ('imagenet2012', ''))):
    data_config_ = inference.data_config(config, data)
    assert (data_config_.dataset, data_config_.data_dir) == expected


def test_checksum_is_zlibs_crc32():
  """ISA-L's CRC-32 where installed (requirements.txt), else zlib's: the same values."""
  image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  assert records.checksum(image) == zlib.crc32(image.tobytes())
  assert records.checksum(image[:, ::-1]) == zlib.crc32(image[:, ::-1].tobytes())


def _sum_of_words(record):
  """Format 1's checksum: the record's bytes as little-endian uint64 words, summed."""
  return int(np.add.reduce(record.reshape(-1).view('<u8'), dtype=np.uint64))


def _damage_record(path, offset, kind):
  """Damages the record at `offset` of shard `path` as format 1's sum could not see:
  two different 8-byte words swapped, or two bytes 8 apart whose values sum to 255 both
  flipped (each becomes the other's value). Returns the record before and after."""
  with open(path, 'r+b') as f:
    f.seek(offset)
    record = np.frombuffer(f.read(256 * 256 * 3), np.uint8).copy()
    damaged = record.copy()
    if kind == 'swapped words':
      words = damaged.view('<u8')
      i = 100 + int(np.flatnonzero(words[100:] != words[99])[0])  # Two that differ.
      words[[99, i]] = words[[i, 99]]
    else:
      o = int(np.flatnonzero(record[:-8].astype(int) + record[8:] == 255)[0])
      damaged[[o, o + 8]] ^= 0xFF
    f.seek(offset)
    f.write(damaged.tobytes())
  return record, damaged


@pytest.mark.parametrize('kind', ['swapped words', 'paired flips'])
def test_damage_a_sum_of_words_misses_is_caught(pngs, tmp_path, kind):
  """Swapped words and paired flips (issue 26: trained on silently with format 1's sum)
  stop the run naming the record and its shard, or are skipped and counted."""
  out = tmp_path / 'damaged'
  shutil.copytree(pngs[1], out)
  split = records.open_split(str(out), 'train')
  before, after = _damage_record(*split.where(3), kind)
  assert not np.array_equal(before, after)
  assert _sum_of_words(before) == _sum_of_words(after)  # Format 1 passed it.
  data = data_config(dataset='records', data_dir=str(out), on_bad_image='error')
  with pytest.raises(ValueError, match=r'Cannot use image cat/2\.png: record 3 of '
                     r'.*images-00000-of-00002\.npy is corrupt: CRC-32 0x[0-9a-f]{8}, stored '
                     r'0x[0-9a-f]{8}\. Write the records again with `python -m '
                     r'alexnet_jax\.prepare records'):
    take(train_batches(data), 6)
  data.on_bad_image = 'skip'
  batches = train_batches(data)
  take(batches, 6)  # More than an epoch (5 steps).
  assert batches.skipped[0] == 'cat/2.png'


def test_records_of_format_1_are_refused_saying_to_rewrite_them(pngs, tmp_path):
  out = tmp_path / 'old'
  shutil.copytree(pngs[1], out)
  path = out / 'train' / records.INDEX_FILE
  with np.load(path) as index:
    fields = {k: index[k] for k in index.files if k != 'version'}
  np.savez(path, **fields)  # As format 1 wrote it: no version.
  with pytest.raises(records.RecordsError, match=r'train are in records format 1 \(checksums '
                     r'that sum 64-bit words.*reads format 2\. Write the records again'):
    input_pipeline.num_examples(data_config(dataset='records', data_dir=str(out)), 'train')


def test_an_overwritten_shard_header_names_the_shard(pngs, tmp_path):
  """A shard whose .npy header was overwritten (NumPy: TokenError): its records are bad
  images named with the shard and what is wrong with it."""
  out = tmp_path / 'damaged'
  shutil.copytree(pngs[1], out)
  shard = out / 'train' / 'images-00000-of-00002.npy'
  with open(shard, 'r+b') as f:
    f.seek(8)
    length = int.from_bytes(f.read(2), 'little')
    f.write(b"{'descr': [[[".ljust(length - 1) + b'\n')
  with pytest.raises(Exception) as library:  # What NumPy says: no file named.
    np.load(shard)
  assert str(shard) not in str(library.value)
  data = data_config(dataset='records', data_dir=str(out), on_bad_image='error')
  with pytest.raises(ValueError, match=r'record \d+ of .*images-00000-of-00002\.npy cannot be '
                     r'read: its shard has a damaged \.npy header \(TokenError: .*\)\. Write '
                     r'the records again'):
    take(train_batches(data), 1)


def test_a_damaged_index_stops_main_naming_it(pngs, tmp_path):
  """index.npz with a byte changed in its first array (zip: Bad CRC-32): one error naming
  the file and what to do, before any compute."""
  out = tmp_path / 'damaged'
  shutil.copytree(pngs[1], out)
  path = out / 'train' / records.INDEX_FILE
  raw = bytearray(path.read_bytes())
  raw[200] ^= 0xFF
  path.write_bytes(bytes(raw))
  result = run_main(tmp_path / 'run', '--config.data.dataset=records',
                    f'--config.data.data_dir={out}', '--config.model.num_classes=3',
                    check=False)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert f'The records index {path} is damaged (' in errors[0]
  assert 'Write the records again with `python -m alexnet_jax.prepare records' in errors[0]
