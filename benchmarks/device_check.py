"""The device check: what a machine with an accelerator must show, in one run, in one JSON.

    scripts/device_check.sh                 # on a GPU machine: within 8 minutes
    scripts/device_check.sh --dry-run       # tiny sizes on the CPU: it starts and ends (CI)

Parts, in this order, each in its own process under a time limit (what is left of
--budget_s is shared out), so a part that fails or runs out of time is recorded and the
others still run:
  tests       tests/test_models.py, test_train.py, test_lowering.py on the device (the ops
              against their oracles at precision highest, every mesh the devices allow
              equal to one device, the lowered programs)
  train_step  benchmarks/train_step.py at batch 128 in float32 (precision highest, then
              default: TF32 on NVIDIA GPUs) and bfloat16, each against compiled PyTorch on
              the same device: images/s and MFU against the device's peak
  synthetic   main on data.dataset='synthetic' (the real loop, logs and checkpoints) with
              config.profile_steps: its images/s and the profile's files
  end_to_end  benchmarks/end_to_end.py on records: the input pipeline feeding the step
              against the step alone
A part whose modules are not installed is skipped with the reason: only end_to_end needs
TensorFlow (tf.data reads the records); the step, synthetic data and these tests run
without it (test_models' TensorFlow oracles are then skipped); PyTorch is the peer;
ml_collections (the configs) may be carried as a wheel (scripts/device_check.sh). Needs no
network: only the repo and what is installed. The JSON (--out, default
benchmarks/results/device_check.json) is rewritten after each part.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ['tests/test_models.py', 'tests/test_train.py', 'tests/test_lowering.py']
# (dtype, precision) of the train-step rows: the paper's float32, TF32, bfloat16.
VARIANTS = (('float32', 'highest'), ('float32', 'default'), ('bfloat16', 'default'))
# Each part: (modules it needs, its share of the budget).
PARTS = {'tests': (('jax', 'ml_collections', 'torch', 'pytest'), 0.3),
         'train_step': (('jax', 'ml_collections', 'torch'), 0.4),
         'synthetic': (('jax', 'ml_collections'), 0.15),
         'end_to_end': (('jax', 'ml_collections', 'tensorflow'), 0.15)}


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--dry-run', dest='dry_run', action='store_true',
                 help='Tiny sizes, any device: checks that every part starts and ends.')
  p.add_argument('--out', default=None, help='The JSON (default: benchmarks/results/'
                 'device_check.json; with --dry-run a temporary file).')
  p.add_argument('--budget_s', type=float, default=None,
                 help='Seconds for all parts (default 470; 900 with --dry-run).')
  p.add_argument('--parts', default=','.join(PARTS), help='Comma-separated parts to run.')
  p.add_argument('--workdir', default=None,
                 help="The synthetic run's workdir, kept with its profile (default: a "
                 'temporary one).')
  p.add_argument('--part', default=None, help=argparse.SUPPRESS)  # A child's part.
  p.add_argument('--part_out', default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def missing_modules(modules):
  return [m for m in modules if importlib.util.find_spec(m) is None]


def versions():
  out = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'tensorflow',
               'tensorflow-cpu', 'jax-cuda12-plugin', 'jax-cuda13-plugin'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def tail(text, n=2000):
  return text[-n:] if text else ''


# ------------------------------------------------------------------------------ parts --

def tests_command(args, out):
  selection = (['tests/test_lowering.py', '-k', 'auto_implementations'] if args.dry_run
               else TESTS)
  return [sys.executable, '-m', 'pytest', '-q', *selection, f'--junitxml={out}.xml']


def tests_result(args, out, proc):
  """Counts and the failed tests' names and first lines, from pytest's JUnit XML."""
  del args
  suite = ET.parse(f'{out}.xml').getroot()
  suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
  failed = []
  for case in suite.iter('testcase'):
    for what in ('failure', 'error'):
      node = case.find(what)
      if node is not None:
        message = (node.get('message') or '').splitlines()
        failed.append(f"{case.get('classname')}::{case.get('name')}: "
                      f"{message[0][:300] if message else what}")
  count = lambda k: int(suite.get(k, 0))
  return {'tests': count('tests'), 'failures': count('failures'), 'errors': count('errors'),
          'skipped': count('skipped'), 'failed': failed,
          'summary': proc.stdout.strip().splitlines()[-1:],
          'env': {'JAX_DEFAULT_MATMUL_PRECISION': 'highest'}}


def run_train_step(args, out):
  """In a child: benchmarks/train_step.py for each of VARIANTS; its rows to `out`."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  size = (['--fast', '--image_size', '67', '--peak_tflops', '0.1'] if args.dry_run else
          ['--batch', '128', '--peer_compile', 'on', '--steps', '10', '--warmup', '3',
           '--repeats', '3'])
  rows = []
  for dtype, precision in VARIANTS[::2] if args.dry_run else VARIANTS:  # Dry: both dtypes.
    rows += train_step.main(['--dtype', dtype, '--precision', precision, *size])
    with open(out, 'w') as f:
      json.dump({'rows': rows}, f)


def train_step_result(args, out, proc):
  del args, proc
  with open(out) as f:
    rows = json.load(f)['rows']
  keep = ('device', 'batch', 'dtype', 'precision', 'jax_img_per_s', 'peer_img_per_s',
          'ratio', 'ratio_paired', 'peer', 'jax_mfu', 'peer_mfu', 'peak_flops',
          'jax_peak_bytes', 'peer_peak_bytes', 'peer_device', 'peer_compiled', 'image_size',
          'jax_repeats', 'peer_repeats')
  return {'rows': [{k: r.get(k) for k in keep} for r in rows]}


def synthetic_command(args, out):
  """main on synthetic data with a profile; the workdir is `out`.workdir or --workdir."""
  workdir = args.workdir or f'{out}.workdir'
  if args.dry_run:
    size = ['--config.data.image_size=67', '--config.data.resize_size=76',
            '--config.batch_size=8', '--config.eval_batch_size=8',
            '--config.num_train_steps=4', '--config.profile_steps=(2, 3)',
            '--config.log_every_steps=2', '--config.data.synthetic_eval_examples=16']
  else:
    size = ['--config.num_train_steps=60', '--config.profile_steps=(50, 55)',
            '--config.log_every_steps=10', '--config.data.synthetic_eval_examples=1280']
  return [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/alexnet.py',
          f'--workdir={workdir}', '--config.data.dataset=synthetic',
          '--config.data.eval_views=1', '--config.eval_every_steps=100000',
          '--config.checkpoint_every_steps=100000', '--config.keep_checkpoints=1', *size]


def synthetic_result(args, out, proc):
  del proc
  workdir = args.workdir or f'{out}.workdir'
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  profile = os.path.join(workdir, 'profile')
  files = sorted(os.path.relpath(os.path.join(d, n), workdir)
                 for d, _, names in os.walk(profile) for n in names)
  return {'images_per_sec': {m['step']: m['images_per_sec'] for m in lines
                             if 'images_per_sec' in m},
          'loss': {m['step']: m['loss'] for m in lines if 'loss' in m},
          'eval_top1_error': [m['eval_top1_error'] for m in lines if 'eval_top1_error' in m],
          'checkpoints': sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
          'profile_files': {f: os.path.getsize(os.path.join(workdir, f)) for f in files},
          'workdir': workdir if args.workdir else None}


def end_to_end_command(args, out):
  size = ['--fast'] if args.dry_run else ['--batch', '128', '--steps', '10', '--repeats', '3',
                                          '--eval_batches', '4']
  return [sys.executable, '-m', 'benchmarks.end_to_end', '--formats', 'records', *size,
          '--out', out]


def end_to_end_result(args, out, proc):
  del args, proc
  with open(out) as f:
    result = json.load(f)
  row = result['rows'][0]
  return {k: row[k] for k in ('format', 'device', 'batch', 'end_to_end_img_per_s',
                              'step_img_per_s', 'end_to_end_ratio',
                              'eval_10_view_end_to_end_ratio')}


def child_command(name):
  def command(args, out):
    return [sys.executable, '-m', 'benchmarks.device_check', '--part', name, '--part_out',
            out] + (['--dry-run'] if args.dry_run else [])
  return command


RUNNERS = {'tests': (tests_command, tests_result),
           'train_step': (child_command('train_step'), train_step_result),
           'synthetic': (synthetic_command, synthetic_result),
           'end_to_end': (end_to_end_command, end_to_end_result)}


def run_part(name, args, tmp, seconds):
  """{'status': 'ok' | 'failed' | 'timeout' | 'skipped', 'seconds', ...} of one part."""
  missing = missing_modules(PARTS[name][0])
  if missing:
    return {'status': 'skipped', 'reason': f'not installed here: {", ".join(missing)}'}
  command, result = RUNNERS[name]
  out = os.path.join(tmp, f'{name}.json')
  cmd = command(args, out)
  path = os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  env = dict(os.environ, PYTHONPATH=path, JAX_DEFAULT_MATMUL_PRECISION='highest',
             TF_CPP_MIN_LOG_LEVEL='2')  # PYTHONPATH keeps carried wheels (device_check.sh).
  if name != 'tests':
    env.pop('JAX_DEFAULT_MATMUL_PRECISION')  # The steps' own config.precision decides.
  print(f'device_check: {name}: {" ".join(cmd)} (limit {seconds:.0f} s)', flush=True)
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=max(seconds, 1))
  except subprocess.TimeoutExpired as e:
    text = lambda x: x if isinstance(x, str) else (x or b'').decode(errors='replace')
    proc = subprocess.CompletedProcess(cmd, None, text(e.stdout), text(e.stderr))
  record = {'seconds': time.perf_counter() - start, 'command': ' '.join(cmd),
            'returncode': proc.returncode}
  try:  # What it wrote, also from a part that ran out of time.
    record.update(result(args, out, proc))
  except (OSError, ValueError, KeyError, IndexError, ET.ParseError) as e:
    record['result_error'] = f'{type(e).__name__}: {e}'
  ok = proc.returncode == 0 and 'result_error' not in record
  record['status'] = 'ok' if ok else 'timeout' if proc.returncode is None else 'failed'
  if not ok:
    record['output_tail'] = tail(proc.stdout, 1000) + tail(proc.stderr)
  return record


def main(argv=None):
  args = parse(argv)
  if args.part:  # A child running one part in this process.
    {'train_step': run_train_step}[args.part](args, args.part_out)
    return None
  budget = args.budget_s or (900.0 if args.dry_run else 470.0)
  names = [n for n in args.parts.split(',') if n]
  unknown = set(names) - set(PARTS)
  if unknown:
    sys.exit(f'Unknown parts {sorted(unknown)}; choose from {list(PARTS)}.')
  out = args.out or (os.path.join(tempfile.gettempdir(), 'device_check_dry_run.json')
                     if args.dry_run else os.path.join(REPO, 'benchmarks', 'results',
                                                       'device_check.json'))
  report = {'meta': {'benchmark': 'device_check', 'dry_run': args.dry_run,
                     'host': platform.node(), 'cpu_count': os.cpu_count(),
                     'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'versions': versions(),
                     'command': ' '.join(['scripts/device_check.sh'] + (argv or sys.argv[1:])),
                     'budget_s': budget},
            'parts': {}}
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for i, name in enumerate(names):
      left = budget - (time.perf_counter() - start)
      share = sum(PARTS[n][1] for n in names[i:])
      seconds = left * PARTS[name][1] / share  # Its share of what is left.
      report['parts'][name] = record = run_part(name, args, tmp, seconds)
      print(f'device_check: {name}: {record["status"]}'
            + (f' ({record["reason"]})' if 'reason' in record else ''), flush=True)
      report['meta']['seconds'] = time.perf_counter() - start
      os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
      with open(out, 'w') as f:
        json.dump(report, f, indent=1)
  print(f'Wrote {out}')
  return report


if __name__ == '__main__':
  main()
