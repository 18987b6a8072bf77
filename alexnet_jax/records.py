"""The records format: every image stored decoded, uint8 S x S x 3, for training without
decoding JPEGs (benchmarks/NOTES.md, item 16).

    ROOT/classes.txt                          class names, one a line; label i is line i
    ROOT/<split>/images-00000-of-00003.npy    uint8 [k, S, S, 3]: k = shard_size, the last
                                              shard fewer (plain .npy: np.load reads it)
    ROOT/<split>/index.npz                    version (FORMAT_VERSION), label int32 [n],
                                              checksum uint32 [n], file_name bytes [n],
                                              size, shard_size, resize_mode ('shorter'
                                              or 'warp')

Written by `python -m alexnet_jax.prepare records`; index.npz is written last, so a split
without it is incomplete. Record i is image i of the split in the source's order (a
folder's sorted classes and files, or TFDS's), at byte offset header + (i % shard_size) *
S * S * 3 of shard i // shard_size: read at any position with one pread, no parsing.
S * S * 3 bytes an image: 196,608 at 256 x 256 (252 GB for ImageNet's training set).

Each record's checksum is its CRC-32 (zlib's; ISA-L computes it): it catches every change
within 32 consecutive bits and any one or two flipped bits. Format 1's sums of 64-bit
words missed swapped words (benchmarks/NOTES.md, item 16.6): its files are refused with a
message to write them again. A damaged index.npz is an error naming it. A record that
cannot be read (shard missing, truncated, unreadable, damaged header) or whose checksum
differs is reported by the reading functions, not raised: the pipeline names it and skips
it or stops, as a bad image.
"""

import os
from typing import NamedTuple
import zlib

from absl import logging
import numpy as np

try:  # ISA-L's CRC-32: zlib's values, computed faster (benchmarks/NOTES.md, item 16.6).
  from isal.isal_zlib import crc32  # pylint: disable=g-import-not-at-top
except ImportError:  # A Python without it (requirements.txt pins it) computes the same.
  crc32 = zlib.crc32

INDEX_FILE = 'index.npz'
CLASSES_FILE = 'classes.txt'
# 2: CRC-32 checksums (1, unversioned: sums of 64-bit words).
FORMAT_VERSION = 2
REWRITE = ('Write the records again with `python -m alexnet_jax.prepare records '
           '--dataset=folder|imagenet2012 --data_dir=SOURCE --out=ROOT` (README, "Data")')


class RecordsError(ValueError):
  """A split's index cannot be used: damaged, or written in another format."""


class Split(NamedTuple):
  """What a reader needs of one split (open_split)."""
  root: str  # ROOT/<split>
  size: int  # S: records are [S, S, 3].
  shard_size: int
  shards: tuple  # File names, in order.
  offsets: tuple  # Each shard's header length in bytes (where record 0 starts), -1 if
  # the shard cannot be used.
  label: np.ndarray  # int32 [n]
  checksum: np.ndarray  # uint32 [n]: CRC-32 of each record
  file_name: np.ndarray  # bytes [n]: the source's name for each image.
  resize_mode: str  # How the source was resized to S x S (config.data.resize_mode).
  shard_errors: tuple = ()  # Why each shard cannot be used (None where it can).

  @property
  def num_examples(self):
    return len(self.label)

  def where(self, i):
    """(shard path, byte offset) of record i."""
    shard, j = divmod(int(i), self.shard_size)
    return (os.path.join(self.root, self.shards[shard]),
            self.offsets[shard] + j * self.size * self.size * 3)

  def describe(self, i):
    """Record i in words: its place in its shard."""
    return f'record {int(i) % self.shard_size} of {self.where(i)[0]}'

  def name(self, i):
    """The source's name of image i, as text."""
    return self.file_name[i].decode('utf-8', 'backslashreplace')


def checksum(image):
  """The CRC-32 of the bytes of `image` (uint8, any shape, C order), as zlib.crc32."""
  return crc32(np.ascontiguousarray(image).reshape(-1))


def _shard_name(k, count):
  return f'images-{k:05d}-of-{count:05d}.npy'


def write_split(root, split, batches, num_examples, shard_size=1024, resize_mode='shorter'):
  """Writes ROOT/<split>: shards of `shard_size` images, then index.npz.

  Args:
    root: ROOT.
    split: split name.
    batches: iterable of (images uint8 [b, S, S, 3], labels int [b], file names bytes [b]),
      the split's images in order.
    num_examples: how many images `batches` holds at most (names the shards; fewer is
      fine, e.g. when bad images were left out).
    shard_size: images per shard (1024: 201 MB at 256 x 256).
    resize_mode: how the images were resized (kept in the index; the pipeline checks it).
  Returns:
    the number of images written.
  """
  folder = os.path.join(root, split)
  os.makedirs(folder, exist_ok=True)
  if os.path.exists(os.path.join(folder, INDEX_FILE)):
    os.remove(os.path.join(folder, INDEX_FILE))  # Incomplete until rewritten.
  for f in os.listdir(folder):  # An earlier write's shards.
    if f.startswith('images-') and f.endswith('.npy'):
      os.remove(os.path.join(folder, f))
  count = max(-(-num_examples // shard_size), 1)
  buffer, shards, labels, names, sums = [], [], [], [], []
  size = None

  def flush():
    if buffer:
      shards.append(_shard_name(len(shards), count))
      np.save(os.path.join(folder, shards[-1]), np.stack(buffer))
      buffer.clear()

  for images, batch_labels, batch_names in batches:
    for image, label, name in zip(images, batch_labels, batch_names):
      if size is None:
        size = image.shape[0]
      if image.shape != (size, size, 3) or image.dtype != np.uint8:
        raise ValueError(f'{name!r}: records hold uint8 [{size}, {size}, 3] images; got '
                         f'{image.dtype} {image.shape}.')
      buffer.append(image)
      labels.append(label)
      names.append(name)
      sums.append(checksum(image))
      if len(buffer) == shard_size:
        flush()
  flush()
  if len(shards) > count:
    raise ValueError(f'{split}: {len(labels)} images, more than num_examples='
                     f'{num_examples}.')
  for k, old in enumerate(shards):  # Named for the shards actually written.
    os.replace(os.path.join(folder, old), os.path.join(folder, _shard_name(k, len(shards))))
  tmp = os.path.join(folder, 'index.tmp.npz')
  np.savez(tmp, version=np.int64(FORMAT_VERSION), label=np.asarray(labels, np.int32),
           checksum=np.asarray(sums, np.uint32),
           file_name=np.asarray(names, dtype=bytes), size=np.int64(size or 0),
           shard_size=np.int64(shard_size), resize_mode=np.asarray(resize_mode))
  os.replace(tmp, os.path.join(folder, INDEX_FILE))
  return len(labels)


def write_classes(root, names):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, CLASSES_FILE), 'w') as f:
    f.write(''.join(f'{name}\n' for name in names))


def read_classes(root):
  with open(os.path.join(root, CLASSES_FILE)) as f:
    return f.read().splitlines()


def exists(root, split):
  return os.path.exists(os.path.join(root, split, INDEX_FILE))


def read_index(root, split):
  """ROOT/<split>/index.npz as a dict of NumPy values; RecordsError if it is damaged or of
  another format version."""
  path = os.path.join(root, split, INDEX_FILE)
  try:
    with np.load(path) as index:
      fields = {k: index[k] for k in index.files}
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # BadZipFile, zlib.error, ...
    raise RecordsError(
        f'The records index {path} is damaged ({type(e).__name__}: {e}); the split cannot '
        f'be read. {REWRITE}.') from e
  version = int(fields.get('version', 1))
  if version != FORMAT_VERSION:
    raise RecordsError(
        f'The records in {os.path.join(root, split)} are in records format {version}'
        + (' (checksums that sum 64-bit words, blind to swapped words)' if version == 1
           else '') + f'; this version of alexnet_jax reads format {FORMAT_VERSION}. '
        f'{REWRITE}.')
  missing = sorted({'label', 'checksum', 'file_name', 'size', 'shard_size',
                    'resize_mode'} - set(fields))
  if missing:
    raise RecordsError(f'The records index {path} lacks {missing}; the split cannot be '
                       f'read. {REWRITE}.')
  return fields


def num_examples(root, split):
  return len(read_index(root, split)['label'])


def open_split(root, split):
  """The Split of ROOT/<split> (index and shard headers read; no image read)."""
  folder = os.path.join(root, split)
  index = read_index(root, split)
  label, sums, names = index['label'], index['checksum'], index['file_name']
  size, shard_size = int(index['size']), int(index['shard_size'])
  resize_mode = str(index['resize_mode'])
  count = -(-len(label) // shard_size)
  shards = tuple(_shard_name(k, count) for k in range(count))
  offsets, errors = [], []
  for k, name in enumerate(shards):
    records = min(shard_size, len(label) - k * shard_size)
    offset, error = _header_length(os.path.join(folder, name), size, records)
    offsets.append(offset)
    errors.append(error)
    if error:
      logging.warning('Records shard %s %s: its %d records are bad images (%s). %s.',
                      os.path.join(folder, name), error, records,
                      'config.data.on_bad_image', REWRITE)
  return Split(folder, size, shard_size, shards, tuple(offsets), label, sums, names,
               resize_mode, tuple(errors))


def _header_length(path, size, count):
  """(bytes before the first record of a shard, None), or (-1, why) for a shard that
  cannot be opened or whose header is not [count, size, size, 3] uint8 (its records then
  read as bad)."""
  headers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  wanted = f'[{count}, {size}, {size}, 3] uint8'
  try:
    with open(path, 'rb') as f:
      try:
        version = np.lib.format.read_magic(f)
      except ValueError:
        return -1, 'is not a NumPy .npy file (its first bytes are not the .npy magic)'
      if version not in headers:
        return -1, f'has a .npy header of unknown version {version}'
      try:
        shape, fortran, dtype = headers[version](f)
      except Exception as e:  # pylint: disable=broad-except  # TokenError, SyntaxError...
        return -1, f'has a damaged .npy header ({type(e).__name__}: {e})'
      if shape != (count, size, size, 3) or fortran or dtype != np.uint8:
        return -1, (f'holds {dtype} {list(shape)}{" (Fortran order)" if fortran else ""}'
                    f', not {wanted}')
      return f.tell(), None
  except FileNotFoundError:
    return -1, 'is missing'
  except OSError as e:
    return -1, f'cannot be opened ({e.strerror or e})'


def _read_checked(split, ids, buffer):
  """Reads record ids[k] into buffer(k) (uint8 [S, S, 3], contiguous) and checks it, for
  each k with ids[k] >= 0; yields (k, None), or (k, why it is bad)."""
  files = {}
  record_bytes = split.size * split.size * 3
  try:
    for k, i in enumerate(np.asarray(ids).tolist()):
      if i < 0:
        continue
      shard, j = divmod(i, split.shard_size)
      out = buffer(k)
      try:
        fd = files.get(shard)
        if fd is None:
          if split.offsets[shard] < 0:
            raise OSError(f'its shard {split.shard_errors[shard]}')
          fd = files[shard] = os.open(os.path.join(split.root, split.shards[shard]),
                                      os.O_RDONLY)
        got = os.preadv(fd, [out], split.offsets[shard] + j * record_bytes)
        if got != record_bytes:
          raise OSError(f'the file ends {got} bytes into it (truncated)')
      except OSError as e:
        yield k, f'{split.describe(i)} cannot be read: {e.strerror or e}'
        continue
      found = checksum(out)
      if found != split.checksum[i]:
        yield k, (f'{split.describe(i)} is corrupt: CRC-32 {int(found):#010x}, stored '
                  f'{int(split.checksum[i]):#010x}')
      else:
        yield k, None
  finally:
    for fd in files.values():
      os.close(fd)


def read(split, ids, into):
  """Reads the records `ids` whole into `into` (uint8 [len(ids), S, S, 3]).

  Negative ids (padding) are left as they are. Returns {k: why} for the records that
  cannot be read or whose checksum differs (their rows of `into` are undefined).
  """
  return {k: error for k, error in _read_checked(split, ids, lambda k: into[k]) if error}


def read_windows(split, ids, corners, mirror, size, into):
  """The size x size window at corners[k] (row, column) of record ids[k], mirrored
  left-right where mirror[k], into into[k] (uint8 [len(ids), size, size, 3]).

  Each record is read into one reused buffer and the window copied out of it; a mirrored
  window channel by channel, which NumPy copies faster than reversed 3-byte pixels
  (benchmarks/NOTES.md, item 16.7). Returns {k: why} for bad records, as `read`.
  """
  scratch = np.empty((split.size, split.size, 3), np.uint8)
  errors = {}
  corners, mirror = np.asarray(corners).tolist(), np.asarray(mirror).tolist()
  for k, error in _read_checked(split, ids, lambda k: scratch):
    if error:
      errors[k] = error
      continue
    y, x = corners[k]
    window = scratch[y:y + size, x:x + size]
    if mirror[k]:
      for c in range(3):
        np.copyto(into[k, :, :, c], window[:, ::-1, c])
    else:
      np.copyto(into[k], window)
  return errors
