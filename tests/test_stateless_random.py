"""stateless_random (NumPy, a batch of seeds at once) equals TensorFlow's ops bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import stateless_random


def seeds(n=3000):
  """Seeds as the pipeline makes them (large, negative) and a few edge cases."""
  rng = np.random.default_rng(0)
  s = rng.integers(-2**63, 2**63 - 1, (n, 2), dtype=np.int64)
  s[:4] = [[0, 0], [0, 1], [-1, -1], [2**63 - 1, -2**63]]
  return s


def per_seed(fn, s, dtype):
  """fn applied by TensorFlow to each seed, inside a tf.function as tf.data runs it."""
  return tf.function(lambda x: tf.map_fn(fn, x, fn_output_signature=dtype))(
      tf.constant(s)).numpy()


def test_fold_in():
  data = np.arange(-5, 3000, 7, dtype=np.int64)
  for seed in ([0, 0], [3, 0], [-7, 12345]):
    want = per_seed(lambda d: tf.random.experimental.stateless_fold_in(
        tf.constant(seed, tf.int64), d), data, tf.int64)
    np.testing.assert_array_equal(stateless_random.fold_in(seed, data), want)


@pytest.mark.parametrize('num', [2, 3])
def test_split(num):
  s = seeds()
  want = per_seed(lambda x: tf.random.experimental.stateless_split(x, num), s, tf.int64)
  np.testing.assert_array_equal(stateless_random.split(s, num), want.transpose(1, 0, 2))


@pytest.mark.parametrize('lo,hi', [(0, 2), (0, 33 * 33), (-5, 7), (0, 2**31 - 1)])
def test_uniform_int(lo, hi):
  s = seeds()
  want = per_seed(lambda x: tf.random.stateless_uniform([], x, lo, hi, dtype=tf.int32), s,
                  tf.int32)
  got = stateless_random.uniform_int(s, lo, hi)
  np.testing.assert_array_equal(got, want)
  assert got.min() >= lo and got.max() < hi


@pytest.mark.parametrize('count', [1, 3, 4, 6])
def test_normal(count):
  s = seeds(20000)
  want = per_seed(lambda x: tf.random.stateless_normal([count], x), s, tf.float32)
  np.testing.assert_array_equal(stateless_random.normal(s, count), want)
