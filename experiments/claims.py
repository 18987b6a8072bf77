"""The paper's design claims, each tested: runs, effects with 95% intervals, verdicts.

    python -m experiments.claims --data_dir=/tmp/imagenette --workdir=/tmp/claims \
        --out=experiments/results/claims.json

The claims are declared in configs/ablation.py (CLAIMS): the paper's network against one
variant, a preset, so each run is exactly `python -m alexnet_jax.main
--config=configs/ablation.py:<variant> --config.seed=<seed> --config.data.data_dir=...`;
this module trains them one after another through `train.train_and_evaluate` in
workdir/<variant>_seed<seed> (a finished run is read, an interrupted one resumes), scores
each run's training split too (for the overfitting claims), and rewrites --out after every
run. A rerun keeps the runs --out holds, so a table longer than one machine's life goes on
from the committed file on another. `--refresh` lands a runner's file in a newer checkout:
it re-analyses --out with this checkout's claims and analysis and rewrites README.md's table
from it, training nothing.

The stopping rule (`next_run`), fixed before the runs: every claim gets seeds 0, 1, 2;
then the reproduction's seeds (REPRODUCTION); then seed by seed, seed k goes only to the
claims still 'not resolved' on seeds 0..k-1, until each is decided or has 10 seeds.

The analysis (`analyse`): per claim and seed, the paper's network minus the variant (the
2 x 2 claims average both levels of the other factor, and report the interaction), a
paired Student t interval over seeds, and a verdict against the paper's side and the
claim's bound (`verdict`). docs/experiments.md says why this interval.
"""

import importlib
import json
import math
import os
import statistics
import time

from alexnet_jax import evaluate
from alexnet_jax import input_pipeline
from alexnet_jax import optimizer
from alexnet_jax import train
from experiments import reproduction

CONFIG = 'configs/ablation.py'
MIN_SEEDS, MAX_SEEDS = 3, 10
# What a claim's effect is computed on, per run: points of error, or steps (as a ratio).
METRICS = ('top1_error', 'top5_error', 'overfit_gap', 'steps_ratio', 'views_gain')
# Training error the steps_ratio metric times runs to (as the paper's Figure 1 does at
# 25%), or the lowest level both runs of a pair reach where one never gets there.
STEPS_LEVEL = 0.5
VERDICTS = ('reproduced', 'reversed', 'no effect here', 'not resolved')
# The reproduction's committed seed 0 (docs/experiments.md).
SEED0 = os.path.join(reproduction.REPO, 'experiments', 'results',
                     'imagenette_bvlc_biases_30ep.json')
README = os.path.join(reproduction.REPO, 'README.md')


def load_config(path):
  """The ConfigDict of 'configs/x.py' or 'configs/x.py:presets' (relative to the repo)."""
  path, _, arg = path.partition(':')
  return config_module(path).get_config(arg)


def config_module(path=CONFIG):
  """The module of a config file 'configs/x.py' (relative to the repo)."""
  return importlib.import_module(os.path.splitext(os.path.normpath(path))[0].replace(os.sep, '.'))


def arms(claim):
  """The presets a claim compares: the paper's network ('') first."""
  v, f = claim.get('variant'), claim.get('factor')
  if v is None:
    return ['']
  return ['', v, f, both(v, f)] if f else ['', v]


def both(*presets):
  """The presets of a 2 x 2 design's fourth cell, in one order whichever claim asks."""
  return ','.join(sorted(presets))


def run_config(base, presets, seed, overrides=None):
  """`base` with `presets`, then `overrides` (flat dotted keys, as main's command line),
  then the seed: the config of `python -m alexnet_jax.main --config=base:presets ...`."""
  config = load_config(f'{base}:{presets}' if presets else base)
  config.update_from_flattened_dict(dict(overrides or {}))
  config.seed = seed
  return config


def slug(presets):
  return ''.join(c if c.isalnum() else '_' for c in presets) or 'paper'


def run(config, workdir, score_train=True):
  """Trains (or resumes, or reads) one run; its record, or None when it stopped before its
  final evaluation (SIGTERM: it saved a checkpoint; rerunning resumes it)."""
  train.train_and_evaluate(config, workdir)
  rec = reproduction.record(workdir)
  final = rec['final']
  _, total_steps = optimizer.run_length(
      config, input_pipeline.num_examples(config.data, config.data.train_split))
  if not final or final['step'] < total_steps:
    return None
  train_rows, _ = reproduction.read_metrics(workdir)
  out = {'seed': config.seed, 'commit': reproduction.git_commit(), 'device': rec['device'],
         'top1_error': final['eval_top1_error'], 'top5_error': final['eval_top5_error'],
         'eval_views': int(final['eval_views']),
         'train_error_by_step': [[r['step'], r['train_top1_error']] for r in train_rows],
         'curves': rec['curves'], 'budget': rec['budget']}
  for k in ('top1', 'top5'):  # The centre view of the final evaluation, where it has one.
    if f'eval_centre_{k}_error' in final or out['eval_views'] == 1:
      out[f'centre_{k}_error'] = final.get(f'eval_centre_{k}_error', final[f'eval_{k}_error'])
  if score_train:  # The training images as the held-out ones are scored: centre crop.
    scored = evaluate.evaluate(workdir, split=config.data.train_split, views=1,
                               progress=False)
    out['train_top1_error'] = scored['top1_error']
  return out


# --- Analysis ---------------------------------------------------------------------------

def t_975(df):
  """Student's t, two-sided 95%, for `df` degrees of freedom (tests check it with SciPy)."""
  table = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
           2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
  if df <= len(table):
    return table[df - 1]
  z = 1.959964  # Cornish-Fisher expansion of t about the normal quantile.
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def smoothed(rows, window=3):
  """[[step, error]] -> [[step, mean of the last `window` logged errors]] (each the error
  on one logged step's batch)."""
  return [[s, sum(e for _, e in rows[max(0, i - window + 1):i + 1]) / min(window, i + 1)]
          for i, (s, _) in enumerate(rows)]


def steps_to(rows, level):
  """The first logged step whose smoothed training error is at most `level`, or None."""
  return next((s for s, e in smoothed(rows) if e <= level), None)


def steps_ratio(paper_run, variant_run, level=STEPS_LEVEL):
  """Steps the paper's network takes to `level` training error over the variant's; the
  level falls to the lowest both reach where one of them never gets to `level`."""
  a, b = paper_run['train_error_by_step'], variant_run['train_error_by_step']
  lowest = max(min(e for _, e in smoothed(a)), min(e for _, e in smoothed(b)))
  level = max(level, lowest)
  return steps_to(a, level) / steps_to(b, level)


def value(metric, run):
  """A run's value of `metric` in points (errors, gaps); None where the run lacks it (a
  run recorded before the metric was)."""
  need = {'overfit_gap': ('centre_top1_error', 'train_top1_error'),
          'views_gain': ('top1_error', 'centre_top1_error')}.get(metric, (metric,))
  if any(k not in run for k in need):
    return None
  if metric == 'overfit_gap':  # Held-out minus training error, both the centre crop.
    return 100 * (run['centre_top1_error'] - run['train_top1_error'])
  if metric == 'views_gain':
    return 100 * (run['top1_error'] - run['centre_top1_error'])
  return 100 * run[metric]


def contrast(metric, paper_run, variant_run):
  """One seed's effect: the paper's network minus the variant in points, or for
  steps_ratio the log of the steps ratio."""
  if metric == 'steps_ratio':
    if 'train_error_by_step' not in paper_run or 'train_error_by_step' not in variant_run:
      return None
    return math.log(steps_ratio(paper_run, variant_run))
  a, b = value(metric, paper_run), value(metric, variant_run)
  return None if a is None or b is None else a - b


def per_seed(claim, metric, runs):
  """{seed: effect} over the seeds where every run the claim needs is done; for a 2 x 2
  claim also {seed: interaction} (the effect at the factor's first level minus second)."""
  by_arm = {p: {r['seed']: r for r in runs.get(p, [])} for p in arms(claim)}
  seeds = sorted(set.intersection(*(set(v) for v in by_arm.values())))
  effects, interactions = {}, {}
  for s in seeds:
    if claim.get('variant') is None:
      v = value(metric, by_arm[''][s])
      if v is not None:
        effects[s] = v
      continue
    pairs = [('', claim['variant'])]
    if claim.get('factor'):
      pairs.append((claim['factor'], both(claim['variant'], claim['factor'])))
    d = [contrast(metric, by_arm[a][s], by_arm[b][s]) for a, b in pairs]
    if any(x is None for x in d):
      continue
    effects[s] = sum(d) / len(d)
    if len(d) == 2:
      interactions[s] = d[0] - d[1]
  return effects, interactions


def interval(values):
  """(mean, [low, high]): Student's t 95% interval over `values`; None for fewer than 2."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, None
  half = t_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
  return mean, [mean - half, mean + half]


def verdict(ci, side, bound):
  """'reproduced' (the interval excludes 0 on the paper's side `side`), 'reversed' (on the
  other), 'no effect here' (inside +-bound), else 'not resolved'."""
  if ci is None:
    return 'not resolved'
  low, high = ci
  if (side < 0 and high < 0) or (side > 0 and low > 0):
    return 'reproduced'
  if (side < 0 and low > 0) or (side > 0 and high < 0):
    return 'reversed'
  if -bound < low and high < bound:
    return 'no effect here'
  return 'not resolved'


def seeds_needed(values, bound):
  """Seeds at which the interval would decide, if mean and spread stayed as they are: the
  half-width below |mean| (excludes 0) or below bound - |mean| (inside +-bound); at least
  MIN_SEEDS, the fewest a verdict takes."""
  if len(values) < 2:
    return None
  mean, sd = abs(sum(values) / len(values)), statistics.stdev(values)
  target = max(mean, bound - mean)
  return next((n for n in range(MIN_SEEDS, 1001) if t_975(n - 1) * sd / math.sqrt(n) < target),
              None)


def analyse(claims, runs):
  """The claims table: one row per claim (issue 23's fields), on every metric too."""
  rows = []
  for c in claims:
    log = c['metric'] == 'steps_ratio'
    bound = math.log(c['bound']) if log else c['bound']
    row = {'claim': c['claim'], 'section': c['section'], 'paper': c['paper'],
           'paper_effect': c['paper_effect'], 'metric': c['metric'],
           'variant': c.get('variant'), 'factor': c.get('factor')}
    effects, interactions = per_seed(c, c['metric'], runs)
    if not effects:
      rows.append(dict(row, effect=None, ci=None, seeds=[], verdict='not resolved'))
      continue
    mean, ci = interval(list(effects.values()))
    # The stopping rule decides nothing on fewer than MIN_SEEDS seeds; nor does the table.
    decided = verdict(ci, c['side'], bound) if len(effects) >= MIN_SEEDS else 'not resolved'
    row.update(seeds=sorted(effects), verdict=decided)
    if log:  # A ratio: the geometric mean and its interval.
      row.update(effect=math.exp(mean), ci=ci and [math.exp(x) for x in ci])
    else:
      row.update(effect=mean, ci=ci)
    if row['verdict'] == 'not resolved':
      row['seeds_needed'] = seeds_needed(list(effects.values()), bound)
    if interactions:
      row['interaction'], row['interaction_ci'] = interval(list(interactions.values()))
    row['other_metrics'] = {}
    for m in METRICS:
      if m == c['metric'] or (m == 'views_gain') != (c.get('variant') is None):
        continue
      e, _ = per_seed(c, m, runs)
      if e:
        mean, ci = interval(list(e.values()))
        if m == 'steps_ratio':
          mean, ci = math.exp(mean), ci and [math.exp(x) for x in ci]
        row['other_metrics'][m] = {'effect': mean, 'ci': ci, 'seeds': sorted(e)}
    rows.append(row)
  return rows


def next_run(claims, runs, reproduction_seeds=(), reproduction_runs=()):
  """The stopping rule: the next ('claims', presets, seed) or ('reproduction', '', seed)
  to run, or None when every claim is decided or has MAX_SEEDS seeds."""
  done = lambda presets, seed: any(r['seed'] == seed for r in runs.get(presets, []))
  for seed in range(MAX_SEEDS):
    if seed == MIN_SEEDS:
      for s in reproduction_seeds:
        if not any(r['seed'] == s for r in reproduction_runs):
          return 'reproduction', '', s
    if seed < MIN_SEEDS:
      open_claims = claims
    else:  # Decided on the seeds before this one.
      earlier = {p: [r for r in rs if r['seed'] < seed] for p, rs in runs.items()}
      open_claims = [c for c, row in zip(claims, analyse(claims, earlier))
                     if row['verdict'] == 'not resolved']
    for presets in dict.fromkeys(p for c in open_claims for p in arms(c)):
      if not done(presets, seed):
        return 'claims', presets, seed
  return None


def power(path, seeds=(3, 5, 10)):
  """The estimate that chose the setting, from the 12 runs of the earlier 2 x 2 result
  (experiments/results/ablations_imagenette.json: LRN x pooling, seeds 0-2, this scale).

  Returns {'within_sd': pooled standard deviation of one configuration's top-1 error over
  seeds (points), 'simple_sd' and 'main_sd': the standard deviation over seeds of a
  simple paired contrast and of a 2 x 2 main effect (pooled over LRN and pooling),
  'half_width': {n: (simple, main)}: the 95% half-widths n seeds would give}.
  """
  with open(path) as fh:
    runs = json.load(fh)['runs']
  top1 = lambda name: {r['seed']: 100 * r['top1_error'] for r in runs[name]}
  a, b = top1('LRN, overlapping pool'), top1('no LRN, overlapping pool')
  c, d = top1('LRN, non-overlapping pool'), top1('no LRN, non-overlapping pool')
  pooled = lambda groups: math.sqrt(sum(statistics.variance(g) for g in groups) / len(groups))
  within = pooled([list(x.values()) for x in (a, b, c, d)])
  simple = pooled([[a[s] - b[s] for s in a], [a[s] - c[s] for s in a]])
  main = pooled([[(a[s] - b[s] + c[s] - d[s]) / 2 for s in a],
                 [(a[s] - c[s] + b[s] - d[s]) / 2 for s in a]])
  return {'within_sd': within, 'simple_sd': simple, 'main_sd': main,
          'half_width': {n: (t_975(n - 1) * simple / math.sqrt(n),
                             t_975(n - 1) * main / math.sqrt(n)) for n in seeds}}


# --- The result file -------------------------------------------------------------------

def earlier_results(path, overrides):
  """The runs of a result file `path` made with the same overrides (data.data_dir may
  differ: it says where the data is, not which); empty if there is no file."""
  if not path or not os.path.exists(path):
    return {}, []
  with open(path) as fh:
    old = json.load(fh)
  same = lambda o: {k: v for k, v in dict(o or {}).items() if k != 'data.data_dir'}
  if same(old.get('overrides')) != same(overrides):
    raise ValueError(
        f'{path} holds runs made with overrides {old.get("overrides")}, not '
        f'{dict(overrides or {})}: give another --out, or delete the file to start over.')
  return old['runs'], old.get('reproduction_runs', [])


def reproduction_summary(runs, seed0_path=None):
  """Mean and 95% interval of the 30-epoch reproduction's ten-view top-1 error over its
  seeds: the committed seed 0 (`seed0_path`) and those run here."""
  errors = {}
  if seed0_path and os.path.exists(seed0_path):
    with open(seed0_path) as fh:
      rec = json.load(fh)
    errors[rec['seed']] = rec['final']['eval_top1_error']
  errors.update({r['seed']: r['top1_error'] for r in runs})
  if not errors:
    return None
  mean, ci = interval([100 * e for e in errors.values()])
  return {'seeds': sorted(errors), 'top1_error': mean, 'ci': ci,
          'per_seed': {str(s): 100 * e for s, e in sorted(errors.items())}}


def train_seconds(budget):
  """A run's training time at its median images/s (evaluation not counted): from its
  budget, so the same whichever invocations, resumed or not, trained it."""
  return budget['steps'] * budget['batch_size'] / budget['images_per_sec']


def report(claims, runs, reproduction_runs, overrides, seed0_path=SEED0):
  """The JSON-ready result: the table, the reproduction, and every run."""
  every = [r for rs in runs.values() for r in rs] + list(reproduction_runs)
  return {
      'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'config': CONFIG,
      'overrides': dict(overrides or {}),
      'method': 'paired Student t over seeds (95%); docs/experiments.md',
      'stopping_rule': f'seeds 0..{MIN_SEEDS - 1} for every claim, then the '
                       'reproduction, then seed k only for the claims not resolved on '
                       f'seeds 0..k-1, up to {MAX_SEEDS} seeds',
      'claims': analyse(claims, runs),
      'reproduction': reproduction_summary(reproduction_runs, seed0_path),
      'devices': sorted({json.dumps(r['device'], sort_keys=True) for r in every}),
      'commits': sorted({r['commit'] for r in every}),
      'train_seconds': sum(train_seconds(r['budget']) for r in every),
      'runs': runs,
      'reproduction_runs': list(reproduction_runs),
  }


# How each metric reads in the table.
MEASURED_AS = {'top1_error': 'top-1 error', 'top5_error': 'top-5 error',
               'overfit_gap': 'held-out minus training error',
               'steps_ratio': 'steps to a training error (ratio)',
               'views_gain': 'top-1 error, ten views minus the centre crop'}


# The first words of format_table's and format_reproduction's output: where the README's
# copies start (kept short, so a README written by an older commit is still found).
TABLE_HEAD, REPRODUCTION_HEAD = '| claim | § |', '**The reproduction over seeds**'


def format_table(rows):
  """Markdown, one line per claim: the table the notebook opens with and the README
  leads with (a test checks the README's is this of the committed result)."""
  def num(x, metric):
    return f'{x:.2f}x' if metric == 'steps_ratio' else f'{x:+.1f}'
  lines = [f"{TABLE_HEAD} the paper | measured as | paper's net minus variant [95% interval] "
           "| seeds | verdict |", '|---|---|---|---|---|---|---|']
  for r in rows:
    m = r['metric']
    measured = MEASURED_AS[m] + (f', 2 x 2 with {r["factor"]}' if r.get('factor') else '')
    effect = '—' if r['effect'] is None else num(r['effect'], m)
    if r['ci']:
      effect += f' [{num(r["ci"][0], m)}, {num(r["ci"][1], m)}]'
    if r.get('interaction') is not None:
      effect += f'; interaction {num(r["interaction"], m)}'
      if r.get('interaction_ci'):
        effect += f' [{num(r["interaction_ci"][0], m)}, {num(r["interaction_ci"][1], m)}]'
    need = f' (needs ~{r["seeds_needed"]} seeds)' if r.get('seeds_needed') else ''
    lines.append(f'| {r["claim"]} | {r["section"]} | {r["paper"]} | {measured} | {effect} | '
                 f'{len(r["seeds"])} | {r["verdict"]}{need} |')
  return '\n'.join(lines)


def format_reproduction(summary):
  """One line: the 30-epoch reproduction's ten-view top-1 error over its seeds, with its
  95% interval (the notebook shows it under the table; the README under its own)."""
  seeds = ', '.join(str(s) for s in summary['seeds'])
  ci = (f'95% interval [{summary["ci"][0]:.1f}, {summary["ci"][1]:.1f}]' if summary['ci']
        else 'one seed: no interval')
  return (f'{REPRODUCTION_HEAD} {seeds} (the paper\'s recipe with BVLC\'s biases, 30 '
          f'epochs): ten-view top-1 error {summary["top1_error"]:.1f}%, {ci}.')


def readme_with(readme, head, block):
  """`readme` (text) with the block that starts with the line starting `head`, up to the
  next blank line, replaced by `block`."""
  try:
    start = readme.index('\n' + head) + 1
  except ValueError:
    raise ValueError(f'README.md has no line starting {head!r} to replace: paste '
                     '`python -m experiments.claims --refresh`\'s output where it belongs '
                     '(the claims table, then the reproduction\'s line)') from None
  end = readme.find('\n\n', start)
  return readme[:start] + block + (readme[end:] if end >= 0 else '\n')


def write(path, text):
  """Writes `path` whole or not at all (a kill mid-write leaves the old file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as fh:
    fh.write(text)
  os.replace(path + '.tmp', path)


def refresh(out, readme=README):
  """Lands a result file in this checkout: re-derives all but `out`'s runs and date with
  this checkout's claims and analysis (`report`; the runner's commit may predate them),
  rewrites `out`, and puts its claims table and reproduction line in `readme`. Returns
  the result. Trains nothing."""
  with open(out) as f:
    result = json.load(f)
  claims = config_module().CLAIMS
  known = {p for c in claims for p in arms(c)}
  if not isinstance(result.get('runs'), dict) or not set(result['runs']) <= known:
    raise ValueError(f'{out} is not a claims runner\'s result file: its "runs" must be keyed '
                     f'by the presets of {CONFIG}\'s claims ({sorted(known)}); --out names '
                     'the file `python -m experiments.claims` wrote')
  date = result.get('date')  # When the runner wrote its last run; the rest is re-derived.
  result = report(claims, result['runs'], result.get('reproduction_runs', []),
                  result.get('overrides'))
  result['date'] = date or result['date']
  with open(readme) as f:
    text = readme_with(f.read(), TABLE_HEAD, format_table(result['claims']))
  text = readme_with(text, REPRODUCTION_HEAD, format_reproduction(result['reproduction']))
  write(out, json.dumps(result, indent=1))
  write(readme, text)
  return result


def run_table(data_dir, workdir, out, overrides=None, claims=None, with_reproduction=True,
              max_runs=None, log=print):
  """Runs what the stopping rule asks for next until it asks for nothing (or `max_runs`
  runs, or a SIGTERM), writing `out` after every run. Returns the report."""
  module = config_module()
  claims = module.CLAIMS if claims is None else claims
  repro = module.REPRODUCTION
  overrides = dict(overrides or {})
  runs, repro_runs = earlier_results(out, overrides)
  result = None
  for _ in range(max_runs if max_runs is not None else 10 ** 6):
    todo = next_run(claims, runs, repro["seeds"] if with_reproduction else (), repro_runs)
    if todo is None:
      break
    kind, presets, seed = todo
    if kind == 'claims':
      config = run_config(CONFIG, presets, seed, dict(overrides, **{'data.data_dir': data_dir}))
      run_dir = os.path.join(workdir, f'{slug(presets)}_seed{seed}')
    else:
      config = run_config(repro['config'], '', seed,
                          dict(repro['overrides'], **{'data.data_dir': data_dir}))
      run_dir = os.path.join(workdir, f'reproduction_seed{seed}')
    rec = run(config, run_dir, score_train=kind == 'claims')
    if rec is None:
      log(f'{presets or kind} (seed {seed}) stopped before its end (SIGTERM); its '
          f'checkpoint is in {run_dir}: rerun the same command to resume it.')
      break
    rec['presets'] = presets
    (runs.setdefault(presets, []) if kind == 'claims' else repro_runs).append(rec)
    result = report(claims, runs, repro_runs, overrides)
    if out:
      write(out, json.dumps(result, indent=1))
    log(f'{kind} {presets or "paper"} (seed {seed}): top-1 {rec["top1_error"]:.4f}')
  return result or report(claims, runs, repro_runs, overrides)


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  del argv
  cpu_settings.apply()
  f = flags.FLAGS
  overrides = {}
  for item in f.set:
    key, _, val = item.partition('=')
    try:
      overrides[key] = json.loads(val)
    except json.JSONDecodeError:
      overrides[key] = val
  if f.refresh:
    result = refresh(f.out, f.readme)
    print(format_table(result['claims']), format_reproduction(result['reproduction']),
          sep='\n\n')
    return
  if not f.data_dir or not f.workdir:
    raise app.UsageError('--data_dir and --workdir are required to run (or --refresh to '
                         're-analyse --out and rewrite the README table without training)')
  module = config_module()
  claims = [c for c in module.CLAIMS if not f.claims or c['claim'] in f.claims]
  result = run_table(f.data_dir, f.workdir, f.out, overrides, claims, f.reproduction,
                     f.max_runs)
  print(format_table(result['claims']))


def define_flags():
  """The CLI's flags (defined here, not at import, so notebooks can import the module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('data_dir', None, 'Imagenette split by `prepare split-folder`.')
  flags.DEFINE_string('workdir', None, 'One sub-folder per run; reruns resume or reuse.')
  flags.DEFINE_string('out', 'experiments/results/claims.json', 'JSON result file.')
  flags.DEFINE_multi_string('set', [], 'key=value config overrides for every claims run '
                            '(JSON values), e.g. num_train_steps=4.')
  flags.DEFINE_list('claims', [], 'Only these claims (names in configs/ablation.py).')
  flags.DEFINE_bool('reproduction', True, 'Also the 30-epoch reproduction seeds.')
  flags.DEFINE_integer('max_runs', None, 'Stop after this many runs.')
  flags.DEFINE_bool('refresh', False, 'Train nothing: re-analyse --out with this '
                    "checkout's code, rewrite it and --readme's claims table.")
  flags.DEFINE_string('readme', README, 'The README whose claims table --refresh rewrites.')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
