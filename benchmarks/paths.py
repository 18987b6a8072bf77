"""Which implementation of LRN, max pooling and the grouped convolutions trains faster here.

    python -m benchmarks.paths --out benchmarks/results/paths_cpu.json
    python -m benchmarks.paths --batch 128 --out benchmarks/results/paths_gpu.json  # a GPU

Times the real training step (benchmarks/train_step.py's, on the default backend) once
per setting of config.model's lrn_impl, pool_impl and group_impl, interleaved in one
process (`common.measure`, so a change of load touches all alike):

  custom         our hand-written paths: lrn_impl='custom', pool_impl='custom',
                 group_impl='split'
  lrn_xla        custom, but LRN by autodiff
  pool_xla       custom, but flax's nn.max_pool (select_and_scatter_add)
  feature_group  custom, but one grouped convolution (feature_group_count=2)
  xla            all three XLA's own (models.XLA_IMPLS)

Prints images/s and each setting's speed relative to 'custom' (the median over repeats
of the per-repeat ratio). models.IMPLS records, per backend, the settings this measured
fastest; benchmarks/NOTES.md item 14 the runs.
"""

import os
import platform
import statistics
import sys
import time

from benchmarks import common
from benchmarks import train_step

CUSTOM = {'lrn_impl': 'custom', 'pool_impl': 'custom', 'group_impl': 'split'}
VARIANTS = {
    'custom': CUSTOM,
    'lrn_xla': {**CUSTOM, 'lrn_impl': 'xla'},
    'pool_xla': {**CUSTOM, 'pool_impl': 'xla'},
    'feature_group': {**CUSTOM, 'group_impl': 'feature_group'},
    'xla': {'lrn_impl': 'xla', 'pool_impl': 'xla', 'group_impl': 'feature_group'},
}


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument('--variants', default=','.join(VARIANTS),
                 help=f'Comma-separated settings to time, from {tuple(VARIANTS)}; the '
                 'first is the one the others are compared with.')
  args = common.parse(p, argv)  # Before JAX loads: --cpu_devices sets XLA_FLAGS.
  from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  cpu_settings.apply(args.cpu_settings)  # Before JAX starts.
  import jax
  import numpy as np
  from alexnet_jax import models

  common.defaults(args, jax.default_backend() == 'cpu')
  names = args.variants.split(',')
  unknown = set(names) - set(VARIANTS)
  if unknown:
    sys.exit(f'--variants: unknown {sorted(unknown)}; choose from {tuple(VARIANTS)}.')
  log = lambda msg: print(msg, flush=True)
  rows = []
  for batch in args.batch:
    log(f'paths: batch {batch}, {args.dtype}, mesh model={args.mesh_model}, '
        f'{jax.default_backend()}')
    runners = {}
    for name in names:
      run, wait, devices = train_step.jax_runner(args, batch, np.random.default_rng(0),
                                                 **VARIANTS[name])
      runners[name] = (run, wait)
    load_before = os.getloadavg()[0]
    rates, faults = common.measure(runners, batch, args.steps, args.repeats, log)
    load = [load_before, os.getloadavg()[0]]
    base = names[0]
    for name in names:
      rows.append({
          'variant': name, **VARIANTS[name], 'batch': batch, 'dtype': args.dtype,
          'mesh_model': args.mesh_model, 'image_size': args.image_size,
          'img_per_s': statistics.median(rates[name]),
          'ratio_to_' + base: statistics.median(
              [r / b for r, b in zip(rates[name], rates[base])]),
          'repeats': rates[name], 'page_faults_per_step': faults[name],
          'load_average_1min': load, 'device': devices[0].device_kind,
          'backend': jax.default_backend(), 'device_count': len(devices)})
    del runners
  print(f'\n{"variant":14s} {"batch":>5s} {"img/s":>8s} {"ratio":>6s}')
  for r in rows:
    print(f'{r["variant"]:14s} {r["batch"]:5d} {r["img_per_s"]:8.1f} '
          f'{r["ratio_to_" + names[0]]:6.3f}')
  print(f'load average (1 min) before and after timing: {rows[-1]["load_average_1min"]}; '
        f'current default (auto): {models.implementations()}')
  if args.out:
    import json
    meta = {'benchmark': 'paths', 'host': platform.node(), 'cpu_count': os.cpu_count(),
            'jax_version': jax.__version__, 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
            'command': ' '.join(['python -m benchmarks.paths'] + sys.argv[1:]),
            'xla_flags': os.environ.get('XLA_FLAGS', '')}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump({'meta': meta, 'rows': rows}, f, indent=1)
    print(f'Wrote {args.out}')
  return rows


if __name__ == '__main__':
  main()
