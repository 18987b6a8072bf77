"""The claims runner: its analysis against hand computations, its stopping rule, its result
file across machines, and real runs stopped by SIGTERM and resumed."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from alexnet_jax import checkpointing
from configs import ablation
from configs import alexnet
from configs import sample
from experiments import claims
from experiments import reproduction

LRN = dict(claim='LRN', section='3.3', variant='no_lrn', factor='non_overlapping_pool',
           metric='top1_error', paper='-1.4', paper_effect=-1.4, side=-1, bound=1.0)
PCA = dict(claim='PCA', section='4.1', variant='no_pca_lighting', metric='top1_error',
           paper='-1', paper_effect=-1.0, side=-1, bound=1.0)
DROPOUT = dict(claim='dropout', section='4.2', variant='no_dropout', metric='overfit_gap',
               paper='overfits', paper_effect=None, side=-1, bound=1.0)
VIEWS = dict(claim='views', section='4.1', variant=None, metric='views_gain', paper='',
             paper_effect=None, side=-1, bound=1.0)
TANH = dict(claim='tanh', section='3.1', variant='tanh', metric='steps_ratio', paper='1/6',
            paper_effect=1 / 6, side=-1, bound=1.25)

FAST = [[1, 0.9], [2, 0.8], [3, 0.6], [4, 0.4], [5, 0.3], [6, 0.2]]
SLOW = [[1, 0.9], [2, 0.9], [3, 0.85], [4, 0.8], [5, 0.7], [6, 0.6]]


def record(seed, top1, centre=None, train=None, rows=FAST):
  return {'seed': seed, 'top1_error': top1, 'top5_error': top1 / 4,
          'centre_top1_error': top1 if centre is None else centre,
          'train_top1_error': 0.1 if train is None else train, 'train_error_by_step': rows,
          'device': {'platform': 'cpu'}, 'commit': 'abc',
          'budget': {'steps': 6, 'batch_size': 4, 'images_per_sec': 2.0}}


def runs_by_hand():
  """Top-1 errors (fractions) chosen so that each claim's figures are easy by hand."""
  top1 = {'': (.30, .32, .31), 'no_lrn': (.31, .35, .33), 'non_overlapping_pool': (.30, .33, .30),
          'no_lrn,non_overlapping_pool': (.33, .34, .33), 'no_pca_lighting': (.30, .32, .315)}
  centre = {'': (.33, .34, .35), 'no_dropout': (.36, .36, .36)}
  train = {'': (.10, .12, .11), 'no_dropout': (.02, .02, .02)}
  runs = {}
  for p in list(top1) + ['no_dropout', 'tanh']:
    runs[p] = [record(s, top1.get(p, top1[''])[s], centre.get(p, centre[''])[s],
                      train.get(p, train[''])[s], SLOW if p == 'tanh' else FAST)
               for s in range(3)]
  return runs


def test_effects_intervals_and_verdicts_by_hand():
  rows = {r['claim']: r for r in claims.analyse([LRN, PCA, DROPOUT, VIEWS, TANH],
                                                 runs_by_hand())}
  # LRN's main effect from the four cells: per seed ((-1) + (-3)) / 2, ((-3) + (-1)) / 2,
  # ((-2) + (-3)) / 2 = -2, -2, -2.5 points; sd sqrt(1/12); t(0.975, 2) = 4.303.
  lrn = rows['LRN']
  half = 4.303 * math.sqrt(1 / 12) / math.sqrt(3)
  assert lrn['effect'] == pytest.approx(-13 / 6)
  assert lrn['ci'] == pytest.approx([-13 / 6 - half, -13 / 6 + half])
  assert lrn['verdict'] == 'reproduced' and lrn['seeds'] == [0, 1, 2]
  # The interaction: (-1) - (-3), (-3) - (-1), (-2) - (-3) = 2, -2, 1.
  assert lrn['interaction'] == pytest.approx(1 / 3)
  # Top-5 is a quarter of top-1 here: its effect a quarter of top-1's.
  assert lrn['other_metrics']['top5_error']['effect'] == pytest.approx(-13 / 24)
  # PCA: 0, 0, -0.5 points, sd sqrt(1/12): inside +-1 point, so no effect here.
  pca = rows['PCA']
  assert pca['effect'] == pytest.approx(-1 / 6)
  assert pca['ci'] == pytest.approx([-1 / 6 - half, -1 / 6 + half])
  assert pca['verdict'] == 'no effect here'
  # Dropout's overfitting gap (held-out centre minus training error): 23, 22, 24 points
  # against 34, 34, 34: -11, -12, -10.
  drop = rows['dropout']
  assert drop['effect'] == pytest.approx(-11)
  assert drop['ci'] == pytest.approx([-11 - 4.303 / math.sqrt(3), -11 + 4.303 / math.sqrt(3)])
  assert drop['verdict'] == 'reproduced'
  # Ten views minus the centre crop of the paper's runs: -3, -2, -4.
  assert rows['views']['effect'] == pytest.approx(-3) and rows['views']['verdict'] == 'reproduced'
  # tanh never reaches 50% (smoothed): both times are to 0.7, the lowest level both
  # reach: steps 4 and 6, a ratio of 2/3 on every seed.
  assert rows['tanh']['effect'] == pytest.approx(2 / 3)
  assert rows['tanh']['ci'] == pytest.approx([2 / 3, 2 / 3])


def test_a_run_without_a_metric_is_left_out_of_that_claim_not_an_error():
  runs = runs_by_hand()
  del runs[''][1]['centre_top1_error']  # As a run recorded before the metric was.
  rows = {r['claim']: r for r in claims.analyse([VIEWS, DROPOUT, LRN], runs)}
  assert rows['views']['seeds'] == [0, 2] and rows['views']['effect'] == pytest.approx(-3.5)
  assert rows['dropout']['seeds'] == [0, 2]
  assert rows['LRN']['seeds'] == [0, 1, 2]  # Its metric, top-1 error, is there.


def test_no_effect_here_always_excludes_the_papers_own_figure():
  """A bound above the paper's figure would call the paper's own result 'no effect'."""
  for c in ablation.CLAIMS:
    if c['paper_effect'] is None:
      continue
    if c['metric'] == 'steps_ratio':
      assert math.log(c['bound']) <= abs(math.log(c['paper_effect'])), c['claim']
    else:
      assert c['bound'] <= abs(c['paper_effect']), c['claim']
    assert c['bound'] <= (1.25 if c['metric'] == 'steps_ratio' else 1.0), c['claim']
  # Pooling's paper figure, -0.4, with the 2 x 2's spread (claims.power: 0.50 a seed):
  # at 6-8 seeds a bound of 1 would have called it 'no effect here'.
  pooling = next(c for c in ablation.CLAIMS if c['claim'] == 'overlapping pooling')
  half = claims.t_975(5) * 0.5 / math.sqrt(6)
  assert claims.verdict([-0.4 - half, -0.4 + half], -1, 1.0) == 'no effect here'
  assert claims.verdict([-0.4 - half, -0.4 + half], -1, pooling['bound']) == 'not resolved'


def test_no_verdict_before_the_stopping_rules_first_three_seeds():
  runs = {p: rs[:2] for p, rs in runs_by_hand().items()}
  (drop,) = claims.analyse([DROPOUT], runs)
  # -11, -12: the interval, -11.5 +- 12.706 * 0.707 / 1.414, excludes 0, yet 2 seeds < 3.
  assert drop['ci'] == pytest.approx([-11.5 - 12.706 / 2, -11.5 + 12.706 / 2])
  assert claims.verdict(drop['ci'], -1, 1.0) == 'reproduced'
  assert drop['verdict'] == 'not resolved'


def test_steps_to_a_training_error_by_hand():
  # Means of the last three logged errors: 0.9, 0.85, 0.7667, 0.6, 0.4333, 0.3.
  assert [round(e, 4) for _, e in claims.smoothed(FAST)] == [0.9, 0.85, 0.7667, 0.6, 0.4333, 0.3]
  assert claims.steps_to(FAST, 0.5) == 5 and claims.steps_to(SLOW, 0.5) is None
  fast, later = {'train_error_by_step': FAST}, {'train_error_by_step': [[s + 1, e]
                                                                         for s, e in FAST]}
  assert claims.steps_ratio(fast, fast) == 1.0
  # Both reach 50%: step 5 for the first, step 6 for the second (the same, a step later).
  assert claims.steps_ratio(fast, later) == pytest.approx(5 / 6)


@pytest.mark.parametrize('ci,side,bound,want', [
    ([-3.0, -1.0], -1, 1.0, 'reproduced'),
    ([-0.8, -0.2], -1, 1.0, 'reproduced'),  # Excludes 0: the paper's side wins.
    ([0.5, 2.0], -1, 1.0, 'reversed'),
    ([-0.9, 0.9], -1, 1.0, 'no effect here'),
    ([-1.1, 0.9], -1, 1.0, 'not resolved'),
    ([0.5, 2.0], +1, 1.0, 'reproduced'),
    (None, -1, 1.0, 'not resolved'),
])
def test_verdicts(ci, side, bound, want):
  assert claims.verdict(ci, side, bound) == want


def test_seeds_needed_by_hand():
  # Mean 1, sd 2: excluding 0 needs t(n-1) * 2 / sqrt(n) < 1 (the wider of 1 and 1 - 1):
  # n = 18 gives 2.110 * 2 / 4.243 = 0.995; n = 17 gives 2.120 * 2 / 4.123 = 1.028.
  values = [-1.0, 1.0, 3.0]  # Mean 1, sd 2.
  assert claims.seeds_needed(values, bound=1.0) == 18
  assert claims.seeds_needed([1.0], 1.0) is None
  # Decided already at 2 seeds (mean 5, sd 0.1): still 3, the rule's first round.
  assert claims.seeds_needed([5.0, 5.1], bound=1.0) == 3


def test_the_table_reads_each_row_by_hand():
  rows = claims.analyse([LRN, PCA, TANH], runs_by_hand())
  rows.append(dict(rows[1], claim='queued', effect=None, ci=None, seeds=[],
                   verdict='not resolved', seeds_needed=None))
  rows[1]['verdict'], rows[1]['seeds_needed'] = 'not resolved', 18
  lines = claims.format_table(rows).splitlines()
  assert len(lines) == 2 + 4 and all(line.count('|') == 8 for line in lines)
  half = 4.303 * math.sqrt(1 / 12) / math.sqrt(3)  # As in the test above: 0.72.
  assert lines[2] == (
      f'| LRN | 3.3 | -1.4 | top-1 error, 2 x 2 with non_overlapping_pool | '
      f'-2.2 [{-13 / 6 - half:+.1f}, {-13 / 6 + half:+.1f}]; interaction +0.3 [-4.8, +5.5] | 3 '
      '| reproduced |')
  # The interaction: 2, -2, 1 (the test above), sd sqrt(13/3): 1/3 +- 4.303 * 2.082 / sqrt(3).
  assert lines[2].split(' | ')[4] == '-2.2 [-2.9, -1.4]; interaction +0.3 [-4.8, +5.5]'
  assert lines[3].endswith('| -0.2 [-0.9, +0.6] | 3 | not resolved (needs ~18 seeds) |')
  assert lines[4].split(' | ')[3:5] == ['steps to a training error (ratio)',
                                        '0.67x [0.67x, 0.67x]']
  assert lines[5] == '| queued | 4.1 | -1 | top-1 error | — | 0 | not resolved |'


def test_the_readme_leads_with_the_committed_claims_table():
  with open(os.path.join(reproduction.REPO, 'experiments', 'results', 'claims.json')) as f:
    table = claims.format_table(json.load(f)['claims'])
  with open(os.path.join(reproduction.REPO, 'README.md')) as f:
    readme = f.read()
  assert table in readme, 'README.md: run `python -m experiments.claims --refresh`'
  assert readme.index(table) < readme.index('**Reproduction**')


def test_the_readme_gives_the_reproduction_over_its_committed_seeds():
  with open(os.path.join(reproduction.REPO, 'experiments', 'results', 'claims.json')) as f:
    line = claims.format_reproduction(json.load(f)['reproduction'])
  with open(os.path.join(reproduction.REPO, 'README.md')) as f:
    readme = f.read()
  assert '\n' + line + '\n' in readme, 'README.md: run `python -m experiments.claims --refresh`'
  assert readme.index('**Reproduction**') < readme.index(line)


def test_the_reproduction_line_is_the_mean_and_t_interval_of_its_seeds(tmp_path):
  """Seed 0 from its committed record, seeds 1 and 2 from the runner: 18, 19, 20 give mean
  19, standard deviation 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.48."""
  seed0 = tmp_path / 'seed0.json'
  seed0.write_text(json.dumps({'seed': 0, 'final': {'eval_top1_error': 0.20}}))
  runs = [{'seed': 1, 'top1_error': 0.18}, {'seed': 2, 'top1_error': 0.19}]
  summary = claims.reproduction_summary(runs, str(seed0))
  assert summary['seeds'] == [0, 1, 2] and summary['top1_error'] == pytest.approx(19)
  assert summary['ci'] == pytest.approx([19 - 4.303 / math.sqrt(3), 19 + 4.303 / math.sqrt(3)],
                                        abs=1e-3)
  assert claims.format_reproduction(summary) == (
      "**The reproduction over seeds** 0, 1, 2 (the paper's recipe with BVLC's biases, 30 "
      'epochs): ten-view top-1 error 19.0%, 95% interval [16.5, 21.5].')
  one = claims.reproduction_summary([], str(seed0))
  assert claims.format_reproduction(one).endswith('error 20.0%, one seed: no interval.')


def test_refresh_lands_a_runners_file_reanalysed_with_its_readme_table(tmp_path):
  """A runner's file from an older commit, stale table and all: `--refresh` (a real
  process) re-analyses its runs with this checkout's claims, keeps the rest, and puts the
  new table in the README in place of the old, the prose around it untouched."""
  out, readme = tmp_path / 'claims.json', tmp_path / 'README.md'
  out.write_text(json.dumps({'runs': runs_by_hand(), 'claims': [{'claim': 'stale'}],
                             'commits': ['abc'], 'wall_seconds': 1.0, 'date': 'then'}))
  readme.write_text('# T\n\nBefore.\n\n| claim | § | old |\n|---|---|---|\n| x | y | z |\n\n'
                    'After.\n\n**The reproduction over seeds** 0: old.\n')
  proc = subprocess.run([sys.executable, '-m', 'experiments.claims', '--refresh',
                         f'--out={out}', f'--readme={readme}'], cwd=reproduction.REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  want = json.loads(json.dumps(claims.analyse(ablation.CLAIMS, runs_by_hand())))
  got = json.loads(out.read_text())
  assert got['claims'] == want and got['commits'] == ['abc'] and got['runs'] == runs_by_hand()
  # Training time from each run's budget: 21 runs of 6 steps x 4 images at 2 images/s.
  assert got['train_seconds'] == 21 * 6 * 4 / 2 and 'wall_seconds' not in got
  assert got['date'] == 'then'  # When the runner wrote it, not when it landed.
  table = claims.format_table(want)
  # The reproduction: the committed seed 0 (the stale file holds no reproduction runs).
  line = claims.format_reproduction(claims.reproduction_summary([], claims.SEED0))
  assert got['reproduction']['seeds'] == [0]
  assert readme.read_text() == f'# T\n\nBefore.\n\n{table}\n\nAfter.\n\n{line}\n'
  assert table in proc.stdout and line in proc.stdout
  # A README without a table: a clear error, and the result file is left as it was.
  readme.write_text('# No table here\n')
  before = out.read_text()
  with pytest.raises(ValueError, match="no line starting '\\| claim"):
    claims.refresh(str(out), str(readme))
  assert out.read_text() == before and readme.read_text() == '# No table here\n'
  # Another result file (the earlier ablation runner's, keyed by names): refused, as is.
  readme.write_text(f'{table}\n\n{line}\n')
  earlier = tmp_path / 'ablations.json'
  earlier.write_text(json.dumps({'runs': {'LRN, overlapping pool': [record(0, .3)]}}))
  with pytest.raises(ValueError, match='not a claims runner'):
    claims.refresh(str(earlier), str(readme))
  assert readme.read_text() == f'{table}\n\n{line}\n'


def test_running_without_data_or_workdir_says_what_is_missing(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'experiments.claims',
                         f'--out={tmp_path / "c.json"}'], cwd=reproduction.REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode != 0
  assert '--data_dir and --workdir are required' in proc.stderr and '--refresh' in proc.stderr
  assert not (tmp_path / 'c.json').exists()


def test_t_quantiles_are_students():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  for df in range(1, 60):
    assert claims.t_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4), df


def test_power_estimate_from_the_earlier_runs_by_hand(tmp_path):
  names = ('LRN, overlapping pool', 'no LRN, overlapping pool', 'LRN, non-overlapping pool',
           'no LRN, non-overlapping pool')
  top1 = ((.30, .32, .31), (.31, .35, .33), (.30, .33, .30), (.33, .34, .33))
  path = tmp_path / 'ablations.json'
  path.write_text(json.dumps({'runs': {n: [{'seed': s, 'top1_error': e} for s, e in enumerate(t)]
                                       for n, t in zip(names, top1)}}))
  p = claims.power(str(path), seeds=(3,))
  # Simple contrasts: LRN -1, -3, -2 (variance 1); pooling 0, -1, 1 (variance 1).
  assert p['simple_sd'] == pytest.approx(1.0)
  # Main effects: LRN -2, -2, -2.5 (variance 1/12); pooling (0 - 2) / 2, (-1 + 1) / 2,
  # (1 + 0) / 2 = -1, 0, 0.5 (variance 7/12).
  assert p['main_sd'] == pytest.approx(math.sqrt((1 / 12 + 7 / 12) / 2))
  assert p['half_width'][3][0] == pytest.approx(4.303 / math.sqrt(3))


def test_the_stopping_rule_adds_seeds_only_to_undecided_claims(tmp_path, monkeypatch):
  """Seeds 0-2 for every claim's runs (seed by seed), then the reproduction, then seed k
  only for the runs of claims not resolved on seeds 0..k-1, up to 10 seeds. The file is
  written after every run, and a rerun from it trains nothing it holds."""
  trained = []

  def fake_run(config, workdir, score_train=True):
    del score_train
    presets = os.path.basename(workdir).rsplit('_seed', 1)[0]
    trained.append((presets, config.seed))
    s = config.seed
    # LRN flips sign seed to seed (never decided); PCA equals the paper (decided at 3).
    top1 = 0.3 + (0.05 * (-1) ** s if presets == "no_lrn" else 0.0)
    return record(s, top1)

  monkeypatch.setattr(claims, 'run', fake_run)
  module = claims.config_module()
  monkeypatch.setattr(module, 'REPRODUCTION', dict(module.REPRODUCTION, seeds=(1,)))
  out = str(tmp_path / 'claims.json')
  written = []
  result = claims.run_table('/data', str(tmp_path), out, claims=[LRN, PCA],
                            log=lambda m: written.append(json.load(open(out))))
  first = ['', 'no_lrn', 'non_overlapping_pool', 'no_lrn,non_overlapping_pool',
           'no_pca_lighting']
  lrn_only = [slug for slug in first if slug != 'no_pca_lighting']
  assert trained[:15] == [(p.replace(',', '_') or 'paper', s) for s in range(3) for p in first]
  assert trained[15] == ('reproduction', 1)
  assert trained[16:] == [(p.replace(',', '_') or 'paper', s) for s in range(3, 10)
                          for p in lrn_only]
  assert len(written) == len(trained) and len(written[-1]['runs']['']) == 10
  rows = {r['claim']: r for r in result['claims']}
  assert rows['PCA']['verdict'] == 'no effect here' and len(rows['PCA']['seeds']) == 3
  assert rows['LRN']['verdict'] == 'not resolved' and len(rows['LRN']['seeds']) == 10
  assert result['reproduction_runs'][0]['seed'] == 1
  trained.clear()
  claims.run_table('/elsewhere', str(tmp_path), out, claims=[LRN, PCA], log=None)
  assert trained == []  # Everything is in the file; where the data is may differ.
  with pytest.raises(ValueError, match='another --out'):
    claims.run_table('/data', str(tmp_path), out, {'data.image_size': 64}, [LRN, PCA])


def test_each_run_is_one_command_of_main():
  """`--config=configs/ablation.py:<presets> --config.seed=<s>` is what the runner runs,
  and every claim's variant is a preset applied after the scale."""
  config = claims.run_config('configs/ablation.py', 'no_lrn,non_overlapping_pool', 2,
                             {'data.data_dir': '/x'})
  expected = ablation.get_config('no_lrn,non_overlapping_pool')
  expected.seed, expected.data.data_dir = 2, '/x'
  assert config.to_dict() == expected.to_dict()
  for c in ablation.CLAIMS:
    for presets in claims.arms(c):
      for p in filter(None, presets.split(',')):
        assert p in alexnet.PRESETS, (c['claim'], p)
  # The 2 x 2 claims share their four runs: one presets string for the fourth cell.
  lrn, pool = (c for c in ablation.CLAIMS if c.get('factor'))
  assert sorted(claims.arms(lrn)) == sorted(claims.arms(pool))
  crop = ablation.get_config('no_crop_flip').data
  assert (crop.image_size, crop.resize_size, crop.flip) == (112, 112, False)


TINY = {'data.image_size': 67, 'data.resize_size': 76, 'batch_size': 8,
        'eval_batch_size': 40, 'num_train_steps': 20, 'eval_every_steps': 10,
        'checkpoint_every_steps': 10, 'log_every_steps': 1}


def test_a_sigterm_ends_the_runner_without_the_stopped_run_and_the_rerun_resumes_it(
    tmp_path):
  """A real SIGTERM to this process while a run trains: the run saves and stops, the
  runner records nothing of it, and the rerun resumes it to its final evaluation and scores
  the training split."""
  run_dir = tmp_path / 'paper_seed0'
  out = str(tmp_path / 'claims.json')

  def sigterm_once_training():  # A logged step: train_and_evaluate's handler is set.
    metrics = run_dir / 'metrics.jsonl'
    while not (metrics.exists() and metrics.stat().st_size):
      time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGTERM)

  killer = threading.Thread(target=sigterm_once_training, daemon=True)
  killer.start()
  messages = []
  claims.run_table(sample.SAMPLE_DIR, str(tmp_path), out, TINY, [VIEWS],
                   with_reproduction=False, log=messages.append)
  killer.join(timeout=60)
  assert not os.path.exists(out)
  assert 'SIGTERM' in messages[-1] and 'rerun' in messages[-1]
  train_rows, _ = reproduction.read_metrics(run_dir)
  stopped = train_rows[-1]['step']
  assert stopped < 20
  saved = [int(d) for d in os.listdir(checkpointing.checkpoint_dir(str(run_dir))) if d.isdigit()]
  assert max(saved) == stopped

  result = claims.run_table(sample.SAMPLE_DIR, str(tmp_path), out, TINY, [VIEWS],
                            with_reproduction=False, max_runs=1, log=messages.append)
  run = result['runs'][''][0]
  train_rows, evals = reproduction.read_metrics(run_dir)
  assert [r['step'] for r in train_rows] == list(range(1, 21))  # Resumed, not restarted.
  assert evals[-1]['step'] == 20 and evals[-1]['eval_views'] == 10
  assert run['top1_error'] == evals[-1]['eval_top1_error']
  assert run['centre_top1_error'] == evals[-1]['eval_centre_top1_error']
  assert 0 <= run['train_top1_error'] <= 1 and run['train_error_by_step'][-1][0] == 20
  assert json.load(open(out))['runs'][''][0]['seed'] == 0
