"""End to end: the input pipeline feeding the training step, against the step alone.

    python -m benchmarks.end_to_end --out benchmarks/results/end_to_end_cpu.json
    python -m benchmarks.end_to_end --formats records,jpeg --dtype bfloat16 --batch 256  # GPU

The real pipeline (`input_pipeline.create_split` over the sample's photographs stored at
256 x 256, in each format of benchmarks/input_pipeline.py) feeds the real step
(`steps.make_train_step` for the paper's config, 1000 classes, on a `partitioning.create_mesh`
mesh), each batch through `partitioning.global_batch`, as train_and_evaluate's loop does. The
step alone runs on the same batches (a second iterator over the same stream), put on the
device before the clock starts. Each repeat times `--steps` steps of both, alternating
which goes first; end_to_end_ratio is the median of each repeat's end-to-end images/s
over its step-alone images/s: 1.0 when the input costs the step nothing.

The 10-view evaluation likewise: the evaluation pipeline feeding `steps.make_eval_step`
over the held-out images, against the evaluation step alone on the same batches
(images/s counts images, not views).
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--formats', default='records,jpeg',
                 help='Comma-separated: records, jpeg (benchmarks/input_pipeline.py); the '
                 "first is the JSON's headline.")
  p.add_argument('--data', default='', help='Folder of 256 x 256 images with train and '
                 'validation splits; default: the sample stored at 256.')
  p.add_argument('--batch', type=int, default=None, help='Global batch (default 128).')
  p.add_argument('--steps', type=int, default=None, help='Timed steps per repeat.')
  p.add_argument('--repeats', type=int, default=None, help='Repeats (median).')
  p.add_argument('--warmup', type=int, default=2, help='Steps after compiling, untimed.')
  p.add_argument('--cpu_settings', default=True, action=argparse.BooleanOptionalAction,
                 help='On the CPU, alexnet_jax.cpu_settings.')
  p.add_argument('--eval_batch', type=int, default=40, help='Global evaluation batch.')
  p.add_argument('--eval_batches', type=int, default=0,
                 help='Evaluation batches timed per repeat (0: the whole held-out split).')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--mesh_model', type=int, default=1, choices=(1, 2))
  p.add_argument('--fast', action='store_true', help='Tiny: check that it runs (CI).')
  p.add_argument('--out', default=None, help='Write the results as JSON to this file.')
  args = p.parse_args(argv)
  if args.fast:
    args.batch, args.steps, args.repeats, args.warmup = args.batch or 4, 1, 1, 0
    args.eval_batch, args.eval_batches = 4, 1
  args.batch, args.steps, args.repeats = args.batch or 128, args.steps or 4, args.repeats or 3
  return args


def setup(args, data):
  """(config, mesh, state, train step, eval step) for the paper's network on `data`."""
  from alexnet_jax import checks, partitioning, steps  # pylint: disable=g-import-not-at-top
  from configs import alexnet  # pylint: disable=g-import-not-at-top

  config = alexnet.get_config('bf16' if args.dtype == 'bfloat16' else '')
  config.data.update({k: data[k] for k in ('dataset', 'data_dir', 'cache')})
  config.batch_size, config.eval_batch_size = args.batch, args.eval_batch
  config.mesh.model, config.mesh.data = args.mesh_model, -1
  checks.validate(config)
  mesh = partitioning.create_mesh(config.mesh, columns=config.model.columns)
  checks.validate_mesh(config, mesh)
  _, state, train_step, eval_step = steps.setup(config, mesh, 1000)
  return config, mesh, state, train_step, eval_step


def time_training(args, config, mesh, state, step):
  """({'end_to_end': [img/s], 'step': [img/s]}, state) over interleaved repeats."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline, partitioning  # pylint: disable=g-import-not-at-top

  def pipeline():
    return input_pipeline.create_split(
        config.data, config.data.train_split, global_batch_size=config.batch_size,
        train=True, seed=config.seed, image_size=config.data.image_size,
        shard=partitioning.data_shard(mesh))

  live, replay = pipeline(), pipeline()  # The same stream twice.
  box = {'state': state}

  def run(batches):
    jax.block_until_ready(box['state'])
    start = time.perf_counter()
    for batch in batches:
      box['state'], metrics = step(box['state'], batch)
    jax.block_until_ready((box['state'], metrics))
    return args.steps * config.batch_size / (time.perf_counter() - start)

  for _ in range(1 + args.warmup):  # Compiles.
    next(replay)
    box['state'], metrics = step(box['state'], partitioning.global_batch(mesh, next(live)))
  jax.block_until_ready(metrics)
  rates = {'end_to_end': [], 'step': []}
  for r in range(args.repeats):
    on_device = [partitioning.global_batch(mesh, next(replay)) for _ in range(args.steps)]
    end_to_end = (partitioning.global_batch(mesh, next(live)) for _ in range(args.steps))
    order = [('step', on_device), ('end_to_end', end_to_end)]
    for name, batches in order if r % 2 == 0 else order[::-1]:
      rates[name].append(run(batches))
    print(f'  repeat {r}: end to end {rates["end_to_end"][-1]:.1f} img/s, step alone '
          f'{rates["step"][-1]:.1f} img/s', flush=True)
  return rates, box['state']


def time_evaluation(args, config, mesh, params, eval_step):
  """{'end_to_end': [img/s], 'step': [img/s]} for the 10-view evaluation, as evaluate()
  reads it (a new pipeline each pass)."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline, partitioning  # pylint: disable=g-import-not-at-top

  def pipeline():
    batches = input_pipeline.create_split(
        config.data, config.data.eval_split, global_batch_size=config.eval_batch_size,
        train=False, image_size=config.data.image_size, num_views=10,
        shard=partitioning.data_shard(mesh))
    return (b for _, b in zip(range(args.eval_batches or 2**62), batches))

  def run(batches):
    """batches: (real images, device batch) pairs."""
    start, images, sums = time.perf_counter(), 0, None
    for count, batch in batches:
      images += count
      sums = eval_step(params, batch)
    jax.block_until_ready(sums)
    return images / (time.perf_counter() - start)

  feed = lambda b: (int(b['mask'].sum()), partitioning.global_batch(mesh, b))
  jax.block_until_ready(eval_step(params, feed(next(pipeline()))[1]))  # Compiles.
  rates = {'end_to_end': [], 'step': []}
  for r in range(args.repeats):
    on_device = [feed(b) for b in pipeline()]
    end_to_end = (feed(b) for b in pipeline())
    order = [('step', on_device), ('end_to_end', end_to_end)]
    for name, batches in order if r % 2 == 0 else order[::-1]:
      rates[name].append(run(batches))
    print(f'  eval repeat {r}: end to end {rates["end_to_end"][-1]:.1f} img/s, step alone '
          f'{rates["step"][-1]:.1f} img/s', flush=True)
  return rates


def summary(rates):
  e2e, alone = statistics.median(rates['end_to_end']), statistics.median(rates['step'])
  paired = statistics.median(a / b for a, b in zip(rates['end_to_end'], rates['step']))
  return e2e, alone, paired


def main(argv=None):
  args = parse(argv)
  from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  cpu_settings.apply(args.cpu_settings)  # Before JAX starts.
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import input_pipeline as ip_bench  # pylint: disable=g-import-not-at-top

  rows = []
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    folder = args.data or ip_bench.sample_at_256(tmp, ('train', 'validation'))
    configs = ip_bench.store_formats(folder, tmp, args.formats.split(','),
                                     ('train', 'validation'))
    for name, data in configs.items():
      print(f'end_to_end: {name}, batch {args.batch}, {args.dtype}', flush=True)
      config, mesh, state, train_step, eval_step = setup(args, data)
      rates, state = time_training(args, config, mesh, state, train_step)
      eval_rates = time_evaluation(args, config, mesh, state.params, eval_step)
      e2e, alone, ratio = summary(rates)
      eval_e2e, eval_alone, eval_ratio = summary(eval_rates)
      devices = list(mesh.devices.flat)
      rows.append({
          'format': name, 'end_to_end_img_per_s': e2e, 'step_img_per_s': alone,
          'end_to_end_ratio': ratio,
          'eval_10_view_end_to_end_img_per_s': eval_e2e,
          'eval_10_view_step_img_per_s': eval_alone, 'eval_10_view_end_to_end_ratio':
          eval_ratio, 'batch': args.batch, 'eval_batch': args.eval_batch,
          'dtype': args.dtype, 'mesh_model': args.mesh_model, 'steps': args.steps,
          'repeats': args.repeats,
          'device': f'{len(devices)}x {devices[0].device_kind}'
                    + (f' ({os.cpu_count()} cores)' if devices[0].platform == 'cpu' else ''),
          'repeats_end_to_end_img_per_s': rates['end_to_end'],
          'repeats_step_img_per_s': rates['step'],
          'repeats_eval_end_to_end_img_per_s': eval_rates['end_to_end'],
          'repeats_eval_step_img_per_s': eval_rates['step'],
      })
      del state, train_step, eval_step
  head = rows[0]
  result = {
      'format': head['format'], 'end_to_end_img_per_s': head['end_to_end_img_per_s'],
      'step_img_per_s': head['step_img_per_s'],
      'end_to_end_ratio': head['end_to_end_ratio'],
      'meta': {'benchmark': 'end_to_end', 'host': platform.node(),
               'cpu_count': os.cpu_count(), 'jax_version': jax.__version__,
               'command': ' '.join(['python -m benchmarks.end_to_end'] + (argv or [])),
               'load_average_1min': [load_before, os.getloadavg()[0]],
               'time': time.strftime('%Y-%m-%d %H:%M:%S'),
               'data': args.data or 'data/sample stored at 256 x 256 (prepare resize)'},
      'rows': rows,
  }
  print('\n| format | device | batch | end to end img/s | step alone img/s | ratio | '
        '10-view eval end to end img/s | eval step alone img/s | ratio |\n'
        '|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["format"]} | {r["device"]} | {r["batch"]} | '
          f'{r["end_to_end_img_per_s"]:.1f} | {r["step_img_per_s"]:.1f} | '
          f'{r["end_to_end_ratio"]:.3f} | {r["eval_10_view_end_to_end_img_per_s"]:.1f} | '
          f'{r["eval_10_view_step_img_per_s"]:.1f} | '
          f'{r["eval_10_view_end_to_end_ratio"]:.3f} |')
  print(f'load average (1 min) before and after: {result["meta"]["load_average_1min"]}')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'Wrote {args.out}')
  return result


if __name__ == '__main__':
  main()
