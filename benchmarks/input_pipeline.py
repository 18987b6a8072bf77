"""Training input pipeline throughput: images per second per CPU core, for each format.

    python -m benchmarks.input_pipeline [--data=FOLDER] [--formats=records,jpeg]
        [--out=benchmarks/results/input_pipeline_cpu.json]

Without --data, the embedded sample's training images are first stored in the paper's
format, 256 x 256 (`prepare resize`: JPEGs at quality 95), which is what a prepared
ImageNet looks like to the pipeline; --data names such a folder instead. The records are
written from that folder (`prepare records`), so both formats hold the same pixels.

Times the full training pipeline (read, decode where there is anything to decode, random
crop, flip, PCA lighting, batching; `input_pipeline.create_split`) after a warm-up, each
format in turn within each repeat (alternating which goes first), a fresh iterator each
time; reports medians. images/s/core divides by the cores this process may use; the
process's CPU time gives images per CPU-second, which other jobs on the machine move less.
The first format (records, what docs/data.md recommends for training) gives the JSON's
`train_images_per_sec_per_core`; every format has a row, with its bytes per image and
for ImageNet's 1,281,167 training images. The 10-view evaluation pipeline is timed too
(--eval_batch images a batch: each is ten 224 x 224 x 3 views, 1.5 MB).
"""

import json
import os
import platform
import resource
import statistics
import tempfile
import time

from absl import app
from absl import flags

from alexnet_jax import input_pipeline
from alexnet_jax import prepare
from configs import sample

FLAGS = flags.FLAGS
flags.DEFINE_string('data', '', 'Folder of 256 x 256 images (root/train/<class>/*); '
                    'default: the sample stored at 256.')
flags.DEFINE_list('formats', ['records', 'jpeg'], "Formats to time; the first is the JSON's "
                  'headline: records (prepare records), jpeg (the folder itself).')
flags.DEFINE_integer('batch', 128, 'Batch size.')
flags.DEFINE_integer('batches', 60, 'Batches timed per repeat.')
flags.DEFINE_integer('warmup', 10, 'Batches before timing.')
flags.DEFINE_integer('repeats', 3, 'Timed repeats per format (median).')
flags.DEFINE_integer('eval_batch', 32, 'Batch size of the 10-view evaluation.')
flags.DEFINE_integer('eval_batches', 12, 'Batches of the 10-view evaluation timed per repeat.')
flags.DEFINE_bool('fast', False, 'A few batches: check that it runs (CI).')
flags.DEFINE_string('out', '', 'JSON file to write.')

IMAGENET_TRAIN = 1_281_167


def cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def store_formats(folder, tmp, formats, splits=('train',)):
  """{format: config.data} for a folder of 256 x 256 images, writing the records to tmp."""
  out = {}
  for name in formats:
    data = sample.get_config().data
    data.cache = False
    if name == 'jpeg':
      data.data_dir = folder
    elif name == 'records':
      root = os.path.join(tmp, 'records')
      if not os.path.exists(root):
        prepare.write_records('folder', folder, root, list(splits))
      data.dataset, data.data_dir = 'records', root
    else:
      raise ValueError(f'Unknown format {name!r}: records or jpeg.')
    out[name] = data
  return out


def sample_at_256(tmp, splits=('train',)):
  """The embedded sample stored at 256 x 256 (prepare resize), under tmp."""
  root = os.path.join(tmp, 'sample256')
  prepare.resize('folder', sample.SAMPLE_DIR, root, list(splits), 256)
  return root


def bytes_per_image(data, split='train'):
  """Bytes on disk per image of a split in this format."""
  if data.dataset == 'records':
    folder = os.path.join(data.data_dir, split)
    files = [os.path.join(folder, f) for f in os.listdir(folder)]
  else:
    folder = os.path.join(data.data_dir, split)
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  return sum(os.path.getsize(f) for f in files) / input_pipeline.num_examples(data, split)


def time_batches(make, warmup, batches, batch):
  """(images/s, images per CPU-second) of `batches` batches after `warmup`."""
  it = make()
  for _ in range(warmup):
    next(it)
  cpu, start = cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
  return batches * batch / wall, batches * batch / cpu


def measure(configs, batch, batches, warmup, repeats, eval_batch, eval_batches):
  """Interleaved repeats: {format: {'train': [(img/s, img/CPU-s)], 'eval': [...]}}."""
  runs = {name: {'train': [], 'eval': []} for name in configs}
  names = list(configs)
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      data = configs[name]
      runs[name]['train'].append(time_batches(
          lambda: input_pipeline.create_split(data, 'train', global_batch_size=batch,
                                              train=True, seed=r, shard=(0, 1)),
          warmup, batches, batch))
      if eval_batches:
        runs[name]['eval'].append(time_eval(data, eval_batch, eval_batches))
  return runs


def time_eval(data, batch, batches):
  """(images/s, images per CPU-second) of the 10-view evaluation pipeline as evaluate()
  reads it, over the training split (the larger one): up to `batches` batches after one,
  counting the real images (not the padding, not the views)."""
  it = input_pipeline.create_split(data, 'train', global_batch_size=batch, train=False,
                                   num_views=10, shard=(0, 1))
  next(it)
  images, cpu, start = 0, cpu_seconds(), time.perf_counter()
  for _, b in zip(range(batches), it):
    images += int(b['mask'].sum())
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
  return images / wall, images / cpu


def median(values, i):
  return statistics.median(v[i] for v in values)


def main(argv):
  del argv
  batch, batches, warmup, repeats = FLAGS.batch, FLAGS.batches, FLAGS.warmup, FLAGS.repeats
  eval_batch, eval_batches = FLAGS.eval_batch, FLAGS.eval_batches
  if FLAGS.fast:
    batch, batches, warmup, repeats, eval_batch, eval_batches = 16, 3, 1, 1, 8, 1
  n = cores()
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    folder = FLAGS.data or sample_at_256(tmp)
    configs = store_formats(folder, tmp, FLAGS.formats)
    sizes = {name: bytes_per_image(data) for name, data in configs.items()}
    runs = measure(configs, batch, batches, warmup, repeats, eval_batch, eval_batches)
  rows = []
  for name in configs:
    train, evals = runs[name]['train'], runs[name]['eval']
    rows.append({
        'format': name,
        'train_images_per_sec': median(train, 0),
        'train_images_per_sec_per_core': median(train, 0) / n,
        'train_images_per_cpu_second': median(train, 1),
        'eval_10_view_images_per_sec': median(evals, 0) if evals else None,
        'eval_10_view_images_per_cpu_second': median(evals, 1) if evals else None,
        'bytes_per_image': sizes[name],
        'imagenet_train_gb': sizes[name] * IMAGENET_TRAIN / 1e9,
        'repeats_train_images_per_sec': [r[0] for r in train],
        'repeats_train_images_per_cpu_second': [r[1] for r in train],
    })
  head = rows[0]
  result = {
      'format': head['format'],
      'train_images_per_sec': head['train_images_per_sec'],
      'train_images_per_sec_per_core': head['train_images_per_sec_per_core'],
      'cores': n, 'batch': batch, 'batches': batches, 'repeats': repeats,
      'eval_batch': eval_batch, 'eval_batches': eval_batches,
      'data': FLAGS.data or 'data/sample stored at 256 x 256 (prepare resize)',
      'cpu': platform.processor() or platform.machine(),
      'load_average_1min': [load_before, os.getloadavg()[0]],
      'time': time.strftime('%Y-%m-%d %H:%M:%S'),
      'rows': rows,
  }
  print('| format | cores | batch | images/s | images/s/core | images/CPU-s | 10-view eval '
        'images/s | bytes/image | ImageNet train |\n|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    ev = r['eval_10_view_images_per_sec']
    print(f'| {r["format"]} | {n} | {batch} | {r["train_images_per_sec"]:.0f} | '
          f'{r["train_images_per_sec_per_core"]:.0f} | {r["train_images_per_cpu_second"]:.0f} | '
          f'{"-" if ev is None else f"{ev:.0f}"} | {r["bytes_per_image"]:,.0f} | '
          f'{r["imagenet_train_gb"]:.0f} GB |')
  print(f'load average (1 min) before and after: {result["load_average_1min"]}')
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or '.', exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
