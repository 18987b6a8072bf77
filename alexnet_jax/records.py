"""The records format: every image stored decoded, uint8 S x S x 3, for training without
decoding JPEGs (benchmarks/NOTES.md, item 16).

    ROOT/classes.txt                          class names, one a line; label i is line i
    ROOT/<split>/images-00000-of-00003.npy    uint8 [k, S, S, 3]: k = shard_size, the last
                                              shard fewer (plain .npy: np.load reads it)
    ROOT/<split>/index.npz                    label int32 [n], checksum uint64 [n],
                                              file_name bytes [n], size, shard_size,
                                              resize_mode ('shorter' or 'warp')

Written by `python -m alexnet_jax.prepare records`; index.npz is written last, so a split
without it is incomplete. Record i is image i of the split in the source's order (a
folder's sorted classes and files, or TFDS's), at byte offset header + (i % shard_size) *
S * S * 3 of shard i // shard_size: read at any position with one pread, no parsing.
S * S * 3 bytes an image: 196,608 at 256 x 256 (252 GB for ImageNet's 1,281,167 training
images, against about 34 GB as 256 x 256 JPEGs at quality 95).

Each record's checksum is the sum of its bytes read as little-endian 64-bit words (a
shorter tail as one word), modulo 2^64: a flipped bit, a zeroed block or another
record's bytes change it, and it costs about 5 us an image against zlib.crc32's 50
(NOTES.md). A record that cannot be read (its shard missing, truncated or unreadable) or
whose checksum differs is reported by the reading functions, not raised: the pipeline
names it and skips it or stops, as a bad image.
"""

import os
from typing import NamedTuple

import numpy as np

INDEX_FILE = 'index.npz'
CLASSES_FILE = 'classes.txt'


class Split(NamedTuple):
  """What a reader needs of one split (open_split)."""
  root: str  # ROOT/<split>
  size: int  # S: records are [S, S, 3].
  shard_size: int
  shards: tuple  # File names, in order.
  offsets: tuple  # Each shard's header length in bytes (where record 0 starts).
  label: np.ndarray  # int32 [n]
  checksum: np.ndarray  # uint64 [n]
  file_name: np.ndarray  # bytes [n]: the source's name for each image.
  resize_mode: str  # How the source was resized to S x S (config.data.resize_mode).

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
  """The sum of the bytes of `image` (uint8, any shape) as little-endian uint64 words."""
  flat = np.ascontiguousarray(image).reshape(-1)
  if len(flat) % 8 == 0:  # 256 x 256 x 3: one reduction.
    return np.add.reduce(flat.view('<u8'), dtype=np.uint64)
  whole = len(flat) // 8 * 8
  total = np.add.reduce(flat[:whole].view('<u8'), dtype=np.uint64)
  if whole < len(flat):
    tail = np.zeros(8, np.uint8)
    tail[:len(flat) - whole] = flat[whole:]
    total += tail.view('<u8')[0]
  return np.uint64(total)


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
  np.savez(tmp, label=np.asarray(labels, np.int32), checksum=np.asarray(sums, np.uint64),
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


def open_split(root, split):
  """The Split of ROOT/<split> (index and shard headers read; no image read)."""
  folder = os.path.join(root, split)
  with np.load(os.path.join(folder, INDEX_FILE)) as index:
    label, sums, names = index['label'], index['checksum'], index['file_name']
    size, shard_size = int(index['size']), int(index['shard_size'])
    resize_mode = str(index['resize_mode'])
  count = -(-len(label) // shard_size)
  shards = tuple(_shard_name(k, count) for k in range(count))
  offsets = []
  for k, name in enumerate(shards):
    offsets.append(_header_length(os.path.join(folder, name), size,
                                  min(shard_size, len(label) - k * shard_size)))
  return Split(folder, size, shard_size, shards, tuple(offsets), label, sums, names,
               resize_mode)


def _header_length(path, size, count):
  """Bytes before the first record of a shard; a shard that cannot be opened or whose
  header is not [count, size, size, 3] uint8 gets -1 (its records read as bad)."""
  headers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      if version not in headers:
        return -1
      shape, fortran, dtype = headers[version](f)
      if shape != (count, size, size, 3) or fortran or dtype != np.uint8:
        return -1
      return f.tell()
  except (OSError, ValueError):
    return -1


def _each(split, ids, buffer):
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
            raise OSError(f'its file is missing or not a shard of [{split.size}, '
                          f'{split.size}, 3] uint8 images')
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
        yield k, (f'{split.describe(i)} is corrupt: checksum {int(found):#018x}, stored '
                  f'{int(split.checksum[i]):#018x}')
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
  return {k: error for k, error in _each(split, ids, lambda k: into[k]) if error}


def read_windows(split, ids, corners, mirror, size, into):
  """The size x size window at corners[k] (row, column) of record ids[k], mirrored
  left-right where mirror[k], into into[k] (uint8 [len(ids), size, size, 3]).

  Each record is read into one reused buffer and the window copied out of it (a mirrored
  window channel by channel: NumPy copies 3-byte pixels in reverse order 4x slower;
  benchmarks/NOTES.md, item 16.7).
  Returns {k: why} for bad records, as `read`.
  """
  scratch = np.empty((split.size, split.size, 3), np.uint8)
  errors = {}
  corners, mirror = np.asarray(corners).tolist(), np.asarray(mirror).tolist()
  for k, error in _each(split, ids, lambda k: scratch):
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
