"""TensorFlow's stateless random ops in NumPy, for a batch of seeds at once, bit for bit.

`tf.random.stateless_*` take one seed [2] per call, so per-example draws cost tf.data
dozens of small ops an example (benchmarks/NOTES.md, item 16.2). These compute the same
numbers for a whole batch of seeds in a few hundred NumPy operations:

  fold_in(seed, data)      tf.random.experimental.stateless_fold_in
  split(seeds, num)        tf.random.experimental.stateless_split
  uniform_int(seeds, lo, hi)  tf.random.stateless_uniform([], seed, lo, hi, tf.int32)
  normal(seeds, count)     tf.random.stateless_normal([count], seed)
  samples(seeds, calls)    the raw 32-bit samples behind them, for drawing from several
                           groups of seeds in one pass (pass them on as `bits`)

with TF's CPU algorithm (Philox-4x32-10, the seed scrambled as StatelessRandomGetKeyCounter
does) and its distributions; the normals call the C library's logf, sinf and cosf, as TF's
kernel does, since NumPy's float32 functions differ in the last bit.
tests/test_stateless_random.py checks every function against TensorFlow.

Seeds are int64 [n, 2] (one TF seed a row).
"""

import ctypes
import ctypes.util
import functools

import numpy as np

# Philox-4x32-10 (Salmon et al. 2011), as tensorflow/core/lib/random/philox_random.h.
_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_INCREMENTS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
# The key StatelessRandomGetKeyCounter scrambles a seed with (random_ops_util.py).
_SCRAMBLE_KEY = 0x02461E293EC8F720
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _philox(key, counter):
  """Philox-4x32-10: key uint32 [n, 2], counter uint32 [n, 4] -> uint32 [n, 4].

  A round multiplies words 0 and 2 by the two constants and mixes the high halves with
  words 1 and 3 and the round's key; here both lanes go through each NumPy op together.
  """
  multipliers = np.asarray(_MULTIPLIERS, np.uint64)[:, None]
  rounds = np.arange(10, dtype=np.uint64)[:, None, None]
  keys = (key.T.astype(np.uint64) + rounds * np.asarray(_KEY_INCREMENTS, np.uint64)[:, None]
          ) & _LOW  # [10, 2, n]: each round's key.
  a = counter[:, 0::2].T.astype(np.uint64)  # Words 0 and 2: [2, n].
  b = counter[:, 1::2].T.astype(np.uint64)  # Words 1 and 3.
  for r in range(10):
    product = multipliers * a
    a, b = (product >> _32)[::-1] ^ b ^ keys[r], (product & _LOW)[::-1]
  return np.stack([a[0], b[0], a[1], b[1]], 1).astype(np.uint32)


def _words(x):
  """uint64 [n] -> uint32 [n, 2] (low word first)."""
  x = np.asarray(x, np.int64).view(np.uint64)
  return np.stack([x & _LOW, x >> _32], -1).astype(np.uint32)


def samples(seeds, calls=1):
  """The raw 32-bit samples TF's ops take from each seed: uint32 [n, 4 * calls].

  TF scrambles a seed into a key (Philox's first two outputs for counter = seed under a
  fixed key) and a counter [0, 0, third, fourth output]; the samples 4j .. 4j + 3 come
  from counter + j. Draw for several groups of seeds at once by concatenating them.
  """
  seeds = np.asarray(seeds, np.int64).reshape(-1, 2)
  n = len(seeds)
  scramble_key = np.broadcast_to(_words(_SCRAMBLE_KEY), (n, 2))
  mix = _philox(scramble_key, np.concatenate([_words(seeds[:, 0]), _words(seeds[:, 1])], 1))
  key = np.tile(mix[:, :2], (calls, 1))
  counter = np.zeros((calls * n, 4), np.uint32)
  counter[:, 0] = np.repeat(np.arange(calls, dtype=np.uint32), n)  # No carry below 2^32.
  counter[:, 2:] = np.tile(mix[:, 2:], (calls, 1))
  out = _philox(key, counter).reshape(calls, n, 4)
  return out.transpose(1, 0, 2).reshape(n, 4 * calls)


def _full_int64(seeds, count):
  """StatelessRandomUniformFullIntV2 with dtype int64: int64 [n, count]."""
  bits = samples(seeds, -(-count // 2)).astype(np.uint64)
  values = bits[:, 0::2] | (bits[:, 1::2] << _32)
  return values[:, :count].view(np.int64)


@functools.lru_cache(maxsize=64)
def _fold_in_first(seed):
  return _full_int64(np.asarray(seed, np.int64)[None], 1)[0, 0]


def fold_in(seed, data):
  """tf.random.experimental.stateless_fold_in(seed, data) for each of data: int64 [n, 2].

  Args:
    seed: int [2], one seed.
    data: int64 [n].
  """
  first = _fold_in_first(tuple(int(x) for x in seed))
  data = np.asarray(data, np.int64)
  return np.stack([np.full(data.shape, first, np.int64), data], -1)


def split(seeds, num=2):
  """tf.random.experimental.stateless_split(seed, num) for each seed: int64 [num, n, 2]."""
  values = _full_int64(seeds, 2 * num)
  return values.reshape(-1, num, 2).transpose(1, 0, 2)


def uniform_int(seeds, minval, maxval, bits=None):
  """tf.random.stateless_uniform([], seed, minval, maxval, dtype=tf.int32): int32 [n].

  The first 32-bit sample modulo the range, as TF's (slightly biased unless the range is
  a power of two). bits: samples(seeds), if already drawn.
  """
  bits = samples(seeds) if bits is None else bits
  span = np.uint32(maxval - minval)
  return (minval + (bits[:, 0] % span).astype(np.int64)).astype(np.int32)


@functools.cache
def _libm():
  """logf, sinf, cosf of the C library, as NumPy ufuncs (object dtype)."""
  libm = ctypes.CDLL(ctypes.util.find_library('m'))
  ufuncs = []
  for name in ('logf', 'sinf', 'cosf'):
    fn = getattr(libm, name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    ufuncs.append(np.frompyfunc(fn, 1, 1))
  return ufuncs


def _unit_float(x):
  """TF's Uint32ToFloat: the 23 low bits as a float32 in [0, 1)."""
  return ((x & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)


def normal(seeds, count, bits=None):
  """tf.random.stateless_normal([count], seed) for each seed: float32 [n, count].

  TF's Box-Muller (random_distributions.h): from samples x0, x1, u1 = max(x0 as a unit
  float, 1e-7), v1 = 2 pi x1 (in double, rounded to float32), u2 = sqrt(-2 logf(u1)),
  normals sinf(v1) u2 and cosf(v1) u2, all in float32. bits: samples(seeds, calls) with
  4 * calls >= count, if already drawn.
  """
  logf, sinf, cosf = _libm()
  bits = samples(seeds, -(-count // 4)) if bits is None else bits[:, :-(-count // 4) * 4]
  u1 = np.maximum(_unit_float(bits[:, 0::2]), np.float32(1e-7))
  v1 = (2.0 * np.pi * _unit_float(bits[:, 1::2]).astype(np.float64)).astype(np.float32)
  u2 = np.sqrt(np.float32(-2) * logf(u1).astype(np.float32))
  out = np.empty(bits.shape, np.float32)
  out[:, 0::2] = sinf(v1).astype(np.float32) * u2
  out[:, 1::2] = cosf(v1).astype(np.float32) * u2
  return out[:, :count]
