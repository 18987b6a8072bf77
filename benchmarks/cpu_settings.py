"""Before/after of alexnet_jax.cpu_settings in one run: the training step with and without.

The settings are process-wide and must precede JAX's start, so each measurement is its own
process (`benchmarks/train_step.py --no-peer`), with and without `--cpu_settings`,
alternating, `--rounds` times:

    python -m benchmarks.cpu_settings --rounds 3 --out benchmarks/results/cpu_settings_cpu.json

Prints images/s of each process and the median of the paired ratios (with / without).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def measure(with_settings, args, tmp):
  """Images/s of the JAX training step in a fresh process."""
  out = os.path.join(tmp, 'row.json')
  command = [sys.executable, '-m', 'benchmarks.train_step', '--no-peer', '--out', out,
             '--batch', str(args.batch), '--repeats', str(args.repeats),
             '--cpu_settings' if with_settings else '--no-cpu_settings']
  if args.fast:
    command += ['--fast']
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                 env=dict(os.environ, ALEXNET_JAX_CPU_DEFAULTS='1'))
  with open(out) as f:
    row = json.load(f)['rows'][0]
  return row['jax_img_per_s'], row['page_faults_per_step']['jax']


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rounds', type=int, default=3, help='Pairs of processes.')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--repeats', type=int, default=3, help="Each process's timed repeats.")
  p.add_argument('--fast', action='store_true', help='Tiny steps (CI).')
  p.add_argument('--out', default='', help='JSON file to write.')
  args = p.parse_args(argv)
  rows, load_before = [], os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.rounds):
      for with_settings in (True, False) if i % 2 == 0 else (False, True):
        rate, faults = measure(with_settings, args, tmp)
        rows.append({'round': i, 'cpu_settings': with_settings, 'img_per_s': rate,
                     'page_faults_per_step': faults})
        print(f'round {i}  cpu_settings={str(with_settings):5s}  {rate:7.1f} img/s  '
              f'{faults:9.0f} page faults a step', flush=True)
  rate = lambda i, on: next(r['img_per_s'] for r in rows
                            if r['round'] == i and r['cpu_settings'] == on)
  ratios = [rate(i, True) / rate(i, False) for i in range(args.rounds)]
  summary = {
      'with_img_per_s': statistics.median(r['img_per_s'] for r in rows if r['cpu_settings']),
      'without_img_per_s': statistics.median(r['img_per_s'] for r in rows
                                             if not r['cpu_settings']),
      'paired_ratio_median': statistics.median(ratios),
  }
  print(f"\ncpu_settings: with {summary['with_img_per_s']:.1f} img/s, without "
        f"{summary['without_img_per_s']:.1f}; paired ratio {summary['paired_ratio_median']:.3f}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump({'benchmark': 'cpu_settings', 'command': ' '.join(
          ['python -m benchmarks.cpu_settings'] + (argv or sys.argv[1:])),
                 'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'host': platform.node(),
                 'cpu_count': os.cpu_count(), 'batch': args.batch,
                 'load_average_1min': [load_before, os.getloadavg()[0]],
                 'rows': rows, **summary}, f, indent=1)
  return summary


if __name__ == '__main__':
  main()
