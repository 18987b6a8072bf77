"""Ablations of Sections 3.3 and 3.4: LRN on/off x overlapping (3/2) / non-overlapping (2/2)
pooling, optionally the one-column net, each trained through `train.train_and_evaluate`.

    # The embedded sample, two seeds:
    python -m experiments.ablations --steps=60 --seeds=0,1 --image_size=112 \
        --resize_size=128 --eval_views=1 --out=/tmp/ablations_sample.json
    # Imagenette (README, "Data"), the committed CPU run's command:
    python -m experiments.ablations --data=/tmp/imagenette --image_size=112 \
        --resize_size=128 --batch_size=32 --steps=400 --eval_every_steps=100 \
        --log_every_steps=20 --eval_views=10 --seeds=0 \
        --out=experiments/results/ablations_imagenette_cpu.json

A variant is a set of config overrides (dotted keys). Each (variant, seed) trains in its own
workdir; its metrics.jsonl gives the learning curves and the final evaluation (the last
eval line: `config.data.eval_views` views). experiments/ablations.ipynb drives this module.
"""

import importlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time

import jax
import ml_collections

from alexnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The 2 x 2 design; the first is the paper's network.
VARIANTS = {
    'LRN, overlapping pool': {},
    'no LRN, overlapping pool': {'model.lrn': False},
    'LRN, non-overlapping pool': {'model.pool_window': 2},
    'no LRN, non-overlapping pool': {'model.lrn': False, 'model.pool_window': 2},
}
ONE_COLUMN = {'one column': {'model.columns': 1, 'mesh.model': 1}}
BASELINE = 'LRN, overlapping pool'

# The paper's reported reductions of top-1 / top-5 error, in points (Sections 3.3, 3.4):
# the feature, when added to the network that lacks it, changes the error by these amounts.
PAPER_EFFECTS = {'LRN': (-1.4, -1.2), 'overlapping pooling': (-0.4, -0.3)}
# Which variant lacks each feature, all else as the paper's network.
EFFECT_CONTRASTS = {'LRN': 'no LRN, overlapping pool',
                    'overlapping pooling': 'LRN, non-overlapping pool'}


def load_config(base='configs/sample.py'):
  """A ConfigDict from a config file path ('configs/x.py' or 'configs/x.py:preset,...')
  relative to the repository, or a copy of a given ConfigDict."""
  if isinstance(base, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(base.to_dict())
  path, _, arg = base.partition(':')
  module = os.path.splitext(os.path.relpath(os.path.join(REPO, path), REPO))[0]
  return importlib.import_module(module.replace(os.sep, '.')).get_config(arg)


def make_config(overrides, seed, steps, base='configs/sample.py'):
  """The base config with dotted-key `overrides`, the seed and the step budget.

  Evaluation (1 view) every `eval_every_steps` of the base, the final one with
  `config.data.eval_views`; one checkpoint, at the end.
  """
  config = load_config(base)
  config.update_from_flattened_dict(dict(overrides))
  config.seed = seed
  config.num_train_steps = steps
  config.log_every_steps = max(1, min(config.log_every_steps, steps))
  config.eval_every_steps = max(1, min(config.eval_every_steps, steps))
  config.checkpoint_every_steps = steps
  config.keep_checkpoints = 1
  return config


def read_metrics(workdir):
  """(train, evals) rows of workdir/metrics.jsonl by step; a resumed run's repeats replace
  the earlier rows."""
  train_rows, eval_rows = {}, {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      if 'loss' in row:
        train_rows[row['step']] = row
      if 'eval_top1_error' in row:
        eval_rows[row['step']] = row
  return ([train_rows[s] for s in sorted(train_rows)],
          [eval_rows[s] for s in sorted(eval_rows)])


def run_variant(name, overrides, seed, steps, workdir, base='configs/sample.py'):
  """Trains one variant for `steps` steps in `workdir`/<name>_seed<seed>.

  Returns {'variant', 'seed', 'workdir', 'seconds', 'overrides', 'curves': {'step',
  'loss', 'train_top1_error', 'learning_rate', 'images_per_sec', 'eval_step',
  'eval_top1_error', 'eval_top5_error'}, 'top1_error', 'top5_error', 'eval_views'}: the
  final evaluation's errors (fractions). A workdir that
  already holds the finished run is read, not retrained.
  """
  config = make_config(overrides, seed, steps, base)
  run_dir = os.path.join(workdir, f'{slug(name)}_seed{seed}')
  t0 = time.perf_counter()
  train.train_and_evaluate(config, run_dir)
  seconds = time.perf_counter() - t0
  train_rows, eval_rows = read_metrics(run_dir)
  final = eval_rows[-1] if eval_rows else None
  if final is None or final['step'] != steps:
    raise RuntimeError(f'{run_dir}/metrics.jsonl has no evaluation at step {steps}; was the '
                       'workdir used by a run with another budget?')
  return {
      'variant': name, 'seed': seed, 'workdir': run_dir, 'seconds': seconds,
      'overrides': dict(overrides),
      'curves': {
          'step': [r['step'] for r in train_rows],
          'loss': [r['loss'] for r in train_rows],
          'train_top1_error': [r['train_top1_error'] for r in train_rows],
          'learning_rate': [r['learning_rate'] for r in train_rows],
          'images_per_sec': [r.get('images_per_sec') for r in train_rows],
          'eval_step': [r['step'] for r in eval_rows],
          'eval_top1_error': [r['eval_top1_error'] for r in eval_rows],
          'eval_top5_error': [r['eval_top5_error'] for r in eval_rows],
      },
      'top1_error': final['eval_top1_error'], 'top5_error': final['eval_top5_error'],
      'eval_views': int(final.get('eval_views', config.data.eval_views)),
  }


def slug(name):
  return ''.join(c if c.isalnum() else '_' for c in name.lower()).strip('_')


def run_all(variants, seeds, steps, workdir, base='configs/sample.py', keep_workdirs=True,
            log=print):
  """Every variant (name -> overrides) with every seed; {name: [run_variant result, ...]}.

  keep_workdirs=False deletes each run's checkpoints and logs once its metrics are read.
  """
  results = {}
  for name, overrides in variants.items():
    for seed in seeds:
      run = run_variant(name, overrides, seed, steps, workdir, base)
      if log:
        log(f'{name} (seed {seed}): top-1 {run["top1_error"]:.4f} top-5 '
            f'{run["top5_error"]:.4f} in {run["seconds"]:.0f} s')
      if not keep_workdirs:
        shutil.rmtree(run['workdir'], ignore_errors=True)
      results.setdefault(name, []).append(run)
  return results


def _mean_std(values):
  """Mean and sample standard deviation (0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
  return mean, math.sqrt(var)


def summarize(results):
  """One row per variant: mean and standard deviation over seeds, min and max (fractions).

  Returns [{'variant', 'seeds', 'top1_error', 'top1_std', 'top1_min', 'top1_max',
  'top5_error', 'top5_std', 'top5_min', 'top5_max'}].
  """
  rows = []
  for name, runs in results.items():
    row = {'variant': name, 'seeds': [r['seed'] for r in runs]}
    for k in ('top1', 'top5'):
      values = [r[f'{k}_error'] for r in runs]
      row[f'{k}_error'], row[f'{k}_std'] = _mean_std(values)
      row[f'{k}_min'], row[f'{k}_max'] = min(values), max(values)
    rows.append(row)
  return rows


def effects(results):
  """Measured effect of each feature beside the paper's, in points of error.

  Effect = error with the feature (the paper's network) - error without it, paired by seed;
  mean and standard deviation over the seeds both variants ran.
  Returns [{'feature', 'top1', 'top1_std', 'top5', 'top5_std', 'paper_top1',
  'paper_top5', 'seeds'}]; a feature whose variants did not run is left out.
  """
  rows = []
  if BASELINE not in results:
    return rows
  base = {r['seed']: r for r in results[BASELINE]}
  for feature, without in EFFECT_CONTRASTS.items():
    if without not in results:
      continue
    other = {r['seed']: r for r in results[without]}
    seeds = sorted(set(base) & set(other))
    row = {'feature': feature, 'seeds': seeds}
    for i, k in enumerate(('top1', 'top5')):
      diffs = [100 * (base[s][f'{k}_error'] - other[s][f'{k}_error']) for s in seeds]
      row[k], row[f'{k}_std'] = _mean_std(diffs)
      row[f'paper_{k}'] = PAPER_EFFECTS[feature][i]
    rows.append(row)
  return rows


def _pm(mean, std, n, sign=''):
  """'mean ± std' in points; the spread left out for one seed."""
  text = f'{mean:{sign}.1f}'
  return f'{text} ± {std:.1f}' if n > 1 else text


def format_table(rows, effect_rows=()):
  """Markdown tables: error per variant (%, mean ± std over seeds), then the effects."""
  lines = ['| variant | seeds | top-1 error (%) | top-5 error (%) |', '|---|---|---|---|']
  for r in rows:
    n = len(r['seeds'])
    lines.append(f'| {r["variant"]} | {n} | '
                 f'{_pm(100 * r["top1_error"], 100 * r["top1_std"], n)} | '
                 f'{_pm(100 * r["top5_error"], 100 * r["top5_std"], n)} |')
  if effect_rows:
    lines += ['', '| feature | measured Δ top-1 (points) | measured Δ top-5 | '
              'paper Δ top-1 | paper Δ top-5 |', '|---|---|---|---|---|']
    for e in effect_rows:
      n = len(e['seeds'])
      lines.append(f'| {e["feature"]} | {_pm(e["top1"], e["top1_std"], n, "+")} | '
                   f'{_pm(e["top5"], e["top5_std"], n, "+")} | {e["paper_top1"]:+.1f} | '
                   f'{e["paper_top5"]:+.1f} |')
  return '\n'.join(lines)


def git_commit():
  """HEAD of the repository, with '+dirty' when the working tree differs; '' without git."""
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + ('+dirty' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return ''


def device_info():
  d = jax.devices()[0]
  return {'platform': d.platform, 'device_kind': d.device_kind,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count()}


def report(results, config, steps, seeds, note='', commit=None):
  """The JSON-ready record of a run: device, budget, commit, table, effects, curves.

  commit: the code the runs used (git_commit() taken before they started); default now's.
  """
  rows, effect_rows = summarize(results), effects(results)
  return {
      'device': device_info(),
      'commit': git_commit() if commit is None else commit,
      'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'budget': {
          'steps': steps, 'seeds': list(seeds), 'batch_size': config.batch_size,
          'image_size': config.data.image_size, 'resize_size': config.data.resize_size,
          'eval_views': config.data.eval_views, 'eval_every_steps': config.eval_every_steps,
          'learning_rate': config.learning_rate, 'schedule': config.schedule,
          'init_scheme': config.model.init_scheme, 'input_std': config.data.std,
          'dataset': config.data.dataset,
          'data_dir': config.data.data_dir or 'data/sample (embedded)',
          'train_split': config.data.train_split, 'eval_split': config.data.eval_split,
          'seconds': sum(r['seconds'] for runs in results.values() for r in runs),
      },
      'note': note,
      'table': rows,
      'effects': effect_rows,
      'markdown': format_table(rows, effect_rows),
      'runs': {name: [{k: v for k, v in r.items() if k != 'workdir'} for r in runs]
               for name, runs in results.items()},
  }


def base_config(data='', *, batch_size=32, eval_batch_size=40, learning_rate=0.0025,
                image_size=224, resize_size=256, eval_views=10, eval_every_steps=50,
                log_every_steps=10, mesh_model=0, cache=True, config=''):
  """The config every variant starts from.

  data '': the embedded sample with configs/sample.py; a folder root (root/train,
  root/validation): configs/imagenette.py:he, i.e. He initialisation and learning rate
  0.0025 for batch 32 like the sample (the paper's N(0, 0.01) init stays at chance in runs
  this short; see configs/sample.py). `config` names another base file[:presets].
  """
  base = load_config(config or ('configs/imagenette.py:he' if data else 'configs/sample.py'))
  if data:
    base.data.data_dir = data
  base.batch_size = batch_size
  base.eval_batch_size = eval_batch_size
  base.learning_rate = learning_rate
  base.data.image_size = image_size
  base.data.resize_size = resize_size
  base.data.eval_views = eval_views
  base.data.cache = cache
  base.eval_every_steps = eval_every_steps
  base.log_every_steps = log_every_steps
  base.mesh.model = mesh_model
  return base


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  base = base_config(
      f.data, batch_size=f.batch_size, eval_batch_size=f.eval_batch_size,
      learning_rate=f.learning_rate, image_size=f.image_size, resize_size=f.resize_size,
      eval_views=f.eval_views, eval_every_steps=f.eval_every_steps,
      log_every_steps=f.log_every_steps, mesh_model=f.mesh_model, cache=f.cache,
      config=f.config)
  variants = dict(VARIANTS, **(ONE_COLUMN if f.one_column else {}))
  seeds = [int(s) for s in f.seeds]
  commit = git_commit()  # The code as the runs start.
  workdir = f.workdir or tempfile.mkdtemp(prefix='ablations_')
  results = run_all(variants, seeds, f.steps, workdir, base,
                    keep_workdirs=bool(f.workdir))
  config = make_config({}, seeds[0], f.steps, base)
  out = report(results, config, f.steps, seeds, note=f.note, commit=commit)
  print(out['markdown'])
  if f.out:
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    with open(f.out, 'w') as fh:
      json.dump(out, fh, indent=1)
    print(f'Wrote {f.out}')
  if not f.workdir:
    shutil.rmtree(workdir, ignore_errors=True)


def define_flags():
  """The CLI's flags (defined here, not at import, so notebooks can import the module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('data', '', "Folder root (root/train, root/validation); '' = the "
                      'embedded sample with configs/sample.py.')
  flags.DEFINE_string('config', '', "Base config file[:presets]; default configs/sample.py, "
                      'or configs/imagenette.py:he with --data.')
  flags.DEFINE_integer('steps', 60, 'Training steps per run.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds; every variant runs with each.')
  flags.DEFINE_integer('batch_size', 32, 'Global batch.')
  flags.DEFINE_integer('eval_batch_size', 40, 'Global evaluation batch.')
  flags.DEFINE_float('learning_rate', 0.0025,
                     "configs/sample.py's: 0.01 x 32/128 with the 'he' preset.")
  flags.DEFINE_integer('image_size', 224, 'Crop side (>= 67).')
  flags.DEFINE_integer('resize_size', 256, 'Stored image side the crop is taken from.')
  flags.DEFINE_integer('eval_views', 10, 'Final evaluation: 10 (the paper) or 1 (centre).')
  flags.DEFINE_integer('eval_every_steps', 50, 'Centre-crop evaluation interval (curves).')
  flags.DEFINE_integer('log_every_steps', 10, 'Training metrics interval.')
  flags.DEFINE_integer('mesh_model', 0, 'config.mesh.model: 2 a column per device, 1 none, '
                       '0 by device count (the one-column variant always runs with 1).')
  flags.DEFINE_bool('cache', True, 'Keep the dataset bytes in memory.')
  flags.DEFINE_bool('one_column', False, 'Also the one-column network.')
  flags.DEFINE_string('workdir', '', 'Keep the runs here; default: a temporary folder.')
  flags.DEFINE_string('out', '', 'JSON result file.')
  flags.DEFINE_string('note', '', 'Free text stored in the JSON.')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
