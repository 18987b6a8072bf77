"""Ablations of Sections 3.3 and 3.4: every variant of a config with every seed, and the
effects with their uncertainty.

    python -m experiments.ablations --config=configs/ablation.py \
        --config.data.data_dir=/tmp/imagenette --seeds=0,1,2 --workdir=/tmp/ablations \
        --out=experiments/results/ablations_imagenette.json

A variant is a preset string appended to the config file (`configs/ablation.py:no_lrn`),
so each (variant, seed) run is exactly `python -m alexnet_jax.main
--config=configs/ablation.py:<variant> --config.seed=<seed>` with the same command-line
overrides; this module trains them one after another through `train.train_and_evaluate`
(a finished run's workdir is read, not retrained; an interrupted one resumes; the --out
file is rewritten after every run and a rerun keeps the runs it holds, so a set longer than
one machine's life continues on another from the committed file), then
reports per variant the mean and standard error of the final (ten-view) errors, and per
effect the paired difference, its 95% interval (Student's t over seeds) and a sentence:
reproduced, reversed, or not resolved at this scale. experiments/ablations.ipynb shows the
committed result and runs the same at a small budget.
"""

import importlib
import json
import math
import os
import statistics
import time

from alexnet_jax import input_pipeline
from alexnet_jax import optimizer
from alexnet_jax import train
from experiments import reproduction

# The paper's reported reductions of top-1 / top-5 error, in points (Sections 3.3, 3.4):
# the feature, added to the network that lacks it, changes the error by these amounts.
PAPER_EFFECTS = {'LRN': (-1.4, -1.2), 'overlapping pooling': (-0.4, -0.3)}
# The variant with the feature (the paper's network) and the one without it.
EFFECT_CONTRASTS = {'LRN': ('LRN, overlapping pool', 'no LRN, overlapping pool'),
                    'overlapping pooling': ('LRN, overlapping pool',
                                            'LRN, non-overlapping pool')}
# Student's t, two-sided 95%, by degrees of freedom (tests check it against SciPy).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def load_config(path):
  """The ConfigDict of 'configs/x.py' or 'configs/x.py:presets' (relative to the repo)."""
  path, _, arg = path.partition(':')
  module = os.path.splitext(os.path.normpath(path))[0].replace(os.sep, '.')
  return importlib.import_module(module).get_config(arg)


def variants(path, one_column=False):
  """{name: presets} declared by the config file `path` (its VARIANTS, and ONE_COLUMN)."""
  module = importlib.import_module(
      os.path.splitext(os.path.normpath(path))[0].replace(os.sep, '.'))
  return dict(module.VARIANTS, **(module.ONE_COLUMN if one_column else {}))


def variant_config(base, variant, seed, overrides=None):
  """config file `base` with the variant's presets, then `overrides` (flat, dotted keys,
  as on main's command line), then the seed."""
  config = load_config(f'{base}:{variant}' if variant else base)
  config.update_from_flattened_dict(dict(overrides or {}))
  config.seed = seed
  return config


def slug(name):
  return ''.join(c if c.isalnum() else '_' for c in name.lower()).strip('_')


def run_variant(name, config, workdir):
  """Trains (or resumes, or reads) one run in `workdir`; its curves and final errors, or
  None when it stopped before its final evaluation (a SIGTERM: the run saved a checkpoint
  and returned; rerunning resumes it)."""
  t0 = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  rec = reproduction.record(workdir, name=name)
  final = rec['final']
  _, total_steps = optimizer.run_length(
      config, input_pipeline.num_examples(config.data, config.data.train_split))
  if not final or final['step'] < total_steps:
    return None
  return {'variant': name, 'seed': config.seed, 'seconds': time.perf_counter() - t0,
          'top1_error': final['eval_top1_error'], 'top5_error': final['eval_top5_error'],
          'eval_views': int(final['eval_views']), 'curves': rec['curves'],
          'budget': rec['budget']}


def run_all(base, variants, seeds, workdir, overrides=None, log=print, done=None,
            on_run=None):
  """{name: [run_variant result per seed]} for every variant (name -> presets).

  Seed by seed (every variant with seed 0, then with seed 1, ...), so that the runs done
  at any moment pair up into effects. `done`: earlier results of the same config and
  overrides ({name: [run]}, e.g. a partial --out file); those runs are kept, not retrained.
  `on_run(results)` is called after each run (main writes the partial report with it). A
  run stopped by SIGTERM ends the loop: the runs finished so far are returned, and the
  stopped one, kept out of them, resumes from its checkpoint on a rerun.
  """
  previous = {(r['variant'], r['seed']): r for runs in (done or {}).values() for r in runs}
  results = {}
  for seed in seeds:
    for name, presets in variants.items():
      run = previous.get((name, seed))
      if run is None:
        config = variant_config(base, presets, seed, overrides)
        run_dir = os.path.join(workdir, f'{slug(name)}_seed{seed}')
        run = run_variant(name, config, run_dir)
        if run is None:
          if log:
            log(f'{name} (seed {seed}) stopped before its end (SIGTERM); its checkpoint is '
                f'in {run_dir}: rerun the same command to resume it.')
          return results
        run['commit'] = reproduction.git_commit()
        if log:
          log(f'{name} (seed {seed}): top-1 {run["top1_error"]:.4f}, top-5 '
              f'{run["top5_error"]:.4f} ({run["eval_views"]} views)')
      results.setdefault(name, []).append(run)
      if on_run:
        on_run(results)
  return results  # In the variants' order: seed 0's runs come first.


def earlier_runs(path, base, overrides):
  """The runs of a result file `path` made with the same config and overrides ({} if the
  file is missing; an error if it holds another experiment, so that none is mixed in).
  data.data_dir may differ: it says where the data is on each machine, not which."""
  if not path or not os.path.exists(path):
    return {}
  with open(path) as fh:
    old = json.load(fh)
  same = lambda o: {k: v for k, v in dict(o or {}).items() if k != 'data.data_dir'}
  if old['config'] != base or same(old['overrides']) != same(overrides):
    raise ValueError(
        f'{path} holds the runs of --config={old["config"]} with overrides '
        f'{old["overrides"]}, not of {base} with {dict(overrides or {})}: give another '
        '--out, or delete the file to start over.')
  return old['runs']


def mean_se(values):
  """(mean, standard error of the mean); the error is 0 for one value."""
  n = len(values)
  mean = sum(values) / n
  return mean, (statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0)


def summarize(results):
  """Per variant, over seeds: mean and standard error of the final errors (fractions)."""
  rows = []
  for name, runs in results.items():
    row = {'variant': name, 'seeds': [r['seed'] for r in runs]}
    for k in ('top1', 'top5'):
      row[f'{k}_error'], row[f'{k}_se'] = mean_se([r[f'{k}_error'] for r in runs])
    rows.append(row)
  return rows


def verdict(low, high, paper):
  """A plain sentence for an effect's 95% interval [low, high] (points; < 0: helps)."""
  if high < 0:
    return 'reproduced: the feature lowers the error' + (
        '' if low <= paper <= high else f' (the paper\'s {paper:+.1f} is outside the interval)')
  if low > 0:
    return 'reversed: the feature raises the error here'
  return 'not resolved at this scale: the interval includes 0'


def effects(results):
  """Per feature: the error with it minus without it, paired by seed, in points.

  Returns [{'feature', 'seeds', 'top1', 'top1_se', 'top1_ci', 'top1_verdict', (the same
  for top5), 'paper_top1', 'paper_top5'}]; a feature whose two variants did not both run
  is left out. The interval is mean +- t(0.975, n-1) * standard error.
  """
  rows = []
  for feature, (with_it, without) in EFFECT_CONTRASTS.items():
    if with_it not in results or without not in results:
      continue
    a = {r['seed']: r for r in results[with_it]}
    b = {r['seed']: r for r in results[without]}
    seeds = sorted(set(a) & set(b))
    row = {'feature': feature, 'seeds': seeds}
    for i, k in enumerate(('top1', 'top5')):
      diffs = [100 * (a[s][f'{k}_error'] - b[s][f'{k}_error']) for s in seeds]
      mean, se = mean_se(diffs)
      half = T_975[len(seeds) - 1] * se if len(seeds) > 1 else math.inf
      paper = PAPER_EFFECTS[feature][i]
      row.update({k: mean, f'{k}_se': se, f'{k}_ci': (mean - half, mean + half),
                  f'{k}_verdict': verdict(mean - half, mean + half, paper),
                  f'paper_{k}': paper})
    rows.append(row)
  return rows


def format_table(rows, effect_rows=()):
  """Markdown: error per variant (%, mean +- standard error), then the effects."""
  lines = ['| variant | seeds | top-1 error (%) | top-5 error (%) |', '|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["variant"]} | {len(r["seeds"])} | {100 * r["top1_error"]:.1f} ± '
                 f'{100 * r["top1_se"]:.1f} | {100 * r["top5_error"]:.1f} ± '
                 f'{100 * r["top5_se"]:.1f} |')
  if effect_rows:
    lines += ['', '| feature | Δ top-1 (points, 95% interval) | Δ top-5 | paper Δ top-1 / '
              'top-5 | top-1: |', '|---|---|---|---|---|']
    for e in effect_rows:
      ci = lambda k: f'{e[k]:+.1f} [{e[k + "_ci"][0]:+.1f}, {e[k + "_ci"][1]:+.1f}]'
      lines.append(f'| {e["feature"]} | {ci("top1")} | {ci("top5")} | '
                   f'{e["paper_top1"]:+.1f} / {e["paper_top5"]:+.1f} | {e["top1_verdict"]} |')
  return '\n'.join(lines)


def report(results, base, seeds, overrides=None, note='', commit=None):
  """The JSON-ready record: device, commit, budget, table, effects, every run's curves."""
  rows, effect_rows = summarize(results), effects(results)
  first = next(iter(results.values()))[0]
  return {
      'device': reproduction.device(),
      'commit': reproduction.git_commit() if commit is None else commit,
      'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'config': base, 'overrides': dict(overrides or {}), 'seeds': list(seeds),
      'budget': dict(first['budget'],
                     seconds=sum(r['seconds'] for runs in results.values() for r in runs)),
      'note': note,
      'table': rows,
      'effects': effect_rows,
      'markdown': format_table(rows, effect_rows),
      'runs': results,
  }


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  del argv
  cpu_settings.apply()  # Before the runs' first computation.
  f = flags.FLAGS
  base = config_flags.get_config_filename(f['config'])
  base = os.path.relpath(base, reproduction.REPO)
  overrides = config_flags.get_override_values(f['config'])
  seeds = [int(s) for s in f.seeds]
  commit = reproduction.git_commit()  # The code as the runs start.

  def write(results):
    if not results:  # Stopped during the first run: nothing to report yet.
      return None
    out = report(results, base, seeds, overrides, note=f.note, commit=commit)
    if f.out:
      os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
      with open(f.out + '.tmp', 'w') as fh:
        json.dump(out, fh, indent=1)
      os.replace(f.out + '.tmp', f.out)  # A partial result after every run.
    return out

  done = earlier_runs(f.out, base, overrides)
  out = write(run_all(base, variants(base, f.one_column), seeds, f.workdir, overrides,
                      done=done, on_run=write))
  if out:
    print(out['markdown'])
    if f.out:
      print(f'Wrote {f.out}')


def define_flags():
  """The CLI's flags (defined here, not at import, so notebooks can import the module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', 'configs/ablation.py',
                                  'The ablation config; its VARIANTS are run.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds; every variant runs with each.')
  flags.DEFINE_bool('one_column', False, 'Also the one-column network.')
  flags.DEFINE_string('workdir', None, 'One sub-folder per run; reruns resume or reuse.')
  flags.DEFINE_string('out', '', 'JSON result file.')
  flags.DEFINE_string('note', '', 'Free text stored in the JSON.')
  flags.mark_flags_as_required(['workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
