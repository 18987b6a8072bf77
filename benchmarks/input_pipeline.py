"""Training input pipeline throughput: images per second per CPU core.

    python -m benchmarks.input_pipeline [--data=FOLDER] [--out=benchmarks/results/input_pipeline_cpu.json]

Without --data, the embedded sample is first stored in the paper's format (256 x 256
JPEGs, `prepare resize`), which is what a prepared ImageNet looks like to the pipeline.
Times the full training pipeline (read, decode with the random crop, flip, PCA lighting,
batching) after a warm-up, with the bytes cached in memory (--cache) or read from disk.
Prints a table and writes JSON with `train_images_per_sec_per_core` and the core count.
"""

import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags

from alexnet_jax import input_pipeline
from alexnet_jax import prepare
from configs import sample

FLAGS = flags.FLAGS
flags.DEFINE_string('data', '', 'Folder root (root/train/<class>/*); default: the sample at 256.')
flags.DEFINE_integer('batch', 128, 'Batch size.')
flags.DEFINE_integer('batches', 60, 'Batches timed.')
flags.DEFINE_integer('warmup', 10, 'Batches before timing.')
flags.DEFINE_bool('cache', False, 'Hold the encoded images in memory.')
flags.DEFINE_bool('fast', False, 'A few batches: check that it runs (CI).')
flags.DEFINE_string('out', '', 'JSON file to write.')


def cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def measure(root, batch, batches, warmup, cache):
  data = sample.get_config().data
  data.data_dir, data.cache = root, cache
  it = input_pipeline.create_split(data, 'train', global_batch_size=batch, train=True,
                                   shard=(0, 1))
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  batch, batches, warmup = FLAGS.batch, FLAGS.batches, FLAGS.warmup
  if FLAGS.fast:
    batch, batches, warmup = 16, 3, 1
  with tempfile.TemporaryDirectory() as tmp:
    root = FLAGS.data
    if not root:
      root = os.path.join(tmp, 'sample256')
      prepare.resize('folder', sample.SAMPLE_DIR, root, ['train'], 256)
    rate = measure(root, batch, batches, warmup, FLAGS.cache)
  n = cores()
  result = {'train_images_per_sec': rate, 'train_images_per_sec_per_core': rate / n,
            'cores': n, 'batch': batch, 'batches': batches, 'cache': FLAGS.cache,
            'data': FLAGS.data or 'data/sample stored at 256 x 256 (prepare resize)',
            'cpu': platform.processor() or platform.machine()}
  print(f'| data | cores | batch | images/s | images/s/core |\n|---|---|---|---|---|\n'
        f'| {result["data"]} | {n} | {batch} | {rate:.0f} | {rate / n:.0f} |')
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or '.', exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
