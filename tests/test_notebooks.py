"""The experiment notebooks run headlessly, end to end, at a tiny budget.

Each notebook is executed by a Jupyter kernel (nbclient) with its "parameters" cell
replaced, as papermill would; its last cell prints its machine-readable results, which the
tests parse. 67 x 67 crops of 76 x 76 images and a few steps: the network's structure at a
fraction of the cost.
"""

import json
import math
import os
import signal
import subprocess
import threading
import time

from nbclient import NotebookClient
import nbformat
import pytest

from alexnet_jax import checkpointing
from configs import ablation
from configs import sample
from experiments import ablations
from experiments import reproduction
from tests.conftest import REPO


def execute(name, parameters):
  """Runs experiments/<name> with its parameters cell set to `parameters`; the notebook."""
  nb = nbformat.read(REPO / 'experiments' / name, as_version=4)
  # The committed outputs' own parameters (a cell tagged "injected-parameters") go too.
  nb.cells = [c for c in nb.cells if 'injected-parameters' not in c.metadata.get('tags', [])]
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'exactly one cell tagged "parameters"'
  cells[0].source = parameters
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  client = NotebookClient(nb, kernel_name='python3', timeout=600,
                          resources={'metadata': {'path': str(REPO)}})
  client.execute(env=env)
  return nb


def printed(nb, prefix):
  """The JSON a cell printed after `prefix`."""
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      for line in out.get('text', '').splitlines():
        if line.startswith(prefix):
          return json.loads(line[len(prefix):])
  raise AssertionError(f'no output line starts with {prefix!r}')


def images(nb):
  return [o for c in nb.cells for o in c.get('outputs', [])
          if 'image/png' in o.get('data', {})]


TINY_ABLATION = {'data.data_dir': sample.SAMPLE_DIR, 'data.image_size': 67,
                 'data.resize_size': 76, 'batch_size': 8, 'eval_batch_size': 40,
                 'num_train_steps': 4, 'eval_every_steps': 2, 'checkpoint_every_steps': 4,
                 'log_every_steps': 2, 'data.eval_views': 1}


def test_ablation_notebook(tmp_path):
  nb = execute('ablations.ipynb', '\n'.join([
      'TRAIN = True', "CONFIG = 'configs/ablation.py'", f'OVERRIDES = {TINY_ABLATION!r}',
      'SEEDS = [0]', f'WORKDIR = {str(tmp_path)!r}']))
  table = printed(nb, 'RESULT_TABLE_JSON=')
  assert [r['variant'] for r in table] == list(ablation.VARIANTS)
  for row in table:
    for k in ('top1_error', 'top5_error'):
      assert math.isfinite(row[k]) and 0 <= row[k] <= 1, row
    assert row['top5_error'] <= row['top1_error']
  # Every variant trained through train_and_evaluate in its own workdir with the config
  # its presets name, and the table holds that run's final evaluation.
  for name, presets in ablation.VARIANTS.items():
    run_dir = tmp_path / f'{ablations.slug(name)}_seed0'
    saved = checkpointing.saved_config(str(run_dir))
    assert saved.model.lrn == ('no_lrn' not in presets)
    assert saved.model.pool_window == (2 if 'non_overlapping_pool' in presets else 3)
    assert saved.model.init_bias == 0.1  # The recipe's.
    assert saved.data.image_size == 67 and saved.num_train_steps == 4
    _, evals = reproduction.read_metrics(run_dir)
    assert [e['step'] for e in evals] == [2, 4]
    row = next(r for r in table if r['variant'] == name)
    assert row['top1_error'] == pytest.approx(evals[-1]['eval_top1_error'])
  assert len(images(nb)) >= 1  # The learning curves.


def test_one_ablation_run_is_one_command_of_main():
  """`--config=configs/ablation.py:no_lrn,non_overlapping_pool` is what the module runs."""
  config = ablations.variant_config('configs/ablation.py', 'no_lrn,non_overlapping_pool', 2,
                                    {'data.data_dir': '/x'})
  expected = ablation.get_config('no_lrn,non_overlapping_pool')
  expected.seed, expected.data.data_dir = 2, '/x'
  assert config.to_dict() == expected.to_dict()
  assert (config.model.lrn, config.model.pool_window) == (False, 2)


def test_features_notebook(tmp_path):
  nb = execute('features.ipynb', '\n'.join([
      f'WORKDIR = {str(tmp_path)!r}', "DATA = ''", 'STEPS = 4', 'IMAGE_SIZE = 67',
      'RESIZE_SIZE = 76',      'NUM_QUERIES = 3', 'NEIGHBOURS = 5']))
  result = printed(nb, 'FEATURES_JSON=')
  for k in ('PROBE_ACCURACY', 'NETWORK_ACCURACY', 'NN_SAME_CLASS'):
    assert math.isfinite(result[k]) and 0 <= result[k] <= 1, result
  colour = result['COLUMN_COLOUR']
  assert set(colour) == {'column 0', 'column 1', 'column 0 at init', 'column 1 at init'}
  # I.i.d. random filters: the channel variance is 2/3 of the total in expectation
  # (48 filters of 363 weights: close to it).
  for c in (0, 1):
    assert colour[f'column {c} at init'] == pytest.approx(2 / 3, abs=0.03)
    assert 0 <= colour[f'column {c}'] <= 1
  assert len(images(nb)) >= 2  # The neighbour grid and the filters.
  # It trained the short run into WORKDIR, through train_and_evaluate.
  assert checkpointing.saved_config(str(tmp_path)).num_train_steps == 4


def test_features_notebook_refuses_a_workdir_without_checkpoints(tmp_path):
  """A mistyped WORKDIR is an error, not a short run on the sample shown in its place."""
  from nbclient.exceptions import CellExecutionError  # pylint: disable=g-import-not-at-top
  missing = tmp_path / 'no_such_run'
  with pytest.raises(CellExecutionError, match='holds no checkpoints'):
    execute('features.ipynb', f"WORKDIR = {str(missing)!r}\nDATA = ''\nSTEPS = 4")
  assert not missing.exists()


def test_summary_and_effects_by_hand():
  """Means, standard errors, paired effects and their t intervals, by hand."""
  errors = {  # variant: [(seed, top-1, top-5)]
      'LRN, overlapping pool': [(0, 0.40, 0.10), (1, 0.44, 0.14), (2, 0.42, 0.12)],
      'no LRN, overlapping pool': [(0, 0.43, 0.12), (1, 0.45, 0.13), (2, 0.47, 0.12)],
      'LRN, non-overlapping pool': [(0, 0.41, 0.10), (1, 0.41, 0.16)],
      'no LRN, non-overlapping pool': [(1, 0.50, 0.20)],
  }
  results = {name: [{'seed': s, 'top1_error': t1, 'top5_error': t5} for s, t1, t5 in runs]
             for name, runs in errors.items()}
  rows = {r['variant']: r for r in ablations.summarize(results)}
  base = rows['LRN, overlapping pool']
  assert base['top1_error'] == pytest.approx(0.42)
  assert base['top1_se'] == pytest.approx(0.02 / math.sqrt(3))  # sd 0.02 (ddof=1).
  assert rows['no LRN, non-overlapping pool']['top1_se'] == 0  # One seed.
  effects = {e['feature']: e for e in ablations.effects(results)}
  # LRN, top-1: -3, -1, -5 points: mean -3, sd 2, se 2/sqrt(3); t(0.975, 2) = 4.303.
  lrn = effects['LRN']
  assert lrn['top1'] == pytest.approx(-3.0)
  assert lrn['top1_se'] == pytest.approx(2 / math.sqrt(3))
  half = 4.303 * 2 / math.sqrt(3)
  assert lrn['top1_ci'] == pytest.approx((-3 - half, -3 + half))
  assert lrn['top1_verdict'].startswith('not resolved')  # -3 + 4.97 > 0.
  # top-5: -2, +1, 0: mean -1/3.
  assert lrn['top5'] == pytest.approx(-1 / 3)
  # Overlapping pooling, seeds 0 and 1 only: -1, +3 points.
  pool = effects['overlapping pooling']
  assert pool['seeds'] == [0, 1] and pool['top1'] == pytest.approx(1.0)
  assert (lrn['paper_top1'], lrn['paper_top5']) == (-1.4, -1.2)
  assert (pool['paper_top1'], pool['paper_top5']) == (-0.4, -0.3)
  assert ablations.verdict(-3.0, -1.0, -1.4).startswith('reproduced')
  assert 'outside' in ablations.verdict(-3.0, -2.0, -1.4)
  assert ablations.verdict(0.5, 2.0, -1.4).startswith('reversed')
  table = ablations.format_table(ablations.summarize(results), ablations.effects(results))
  assert '| LRN, overlapping pool | 3 | 42.0 ± 1.2 | 12.0 ± 1.2 |' in table
  assert '| no LRN, non-overlapping pool | 1 | 50.0 ± 0.0 | 20.0 ± 0.0 |' in table


def test_runs_go_seed_by_seed_and_those_in_the_result_file_are_not_retrained(
    tmp_path, monkeypatch):
  """A partial --out file continues where it stopped; another experiment's is refused."""
  trained = []

  def fake_run(name, config, workdir):
    trained.append((name, config.seed))
    return {'variant': name, 'seed': config.seed, 'seconds': 1.0, 'top1_error': 0.5,
            'top5_error': 0.1, 'eval_views': 10, 'curves': {}, 'budget': {}}

  monkeypatch.setattr(ablations, 'run_variant', fake_run)
  names = list(ablations.variants('configs/ablation.py'))
  partial = []
  results = ablations.run_all('configs/ablation.py', ablations.variants('configs/ablation.py'),
                              [0, 1], str(tmp_path), log=None,
                              on_run=lambda r: partial.append(sum(map(len, r.values()))))
  assert trained == [(n, s) for s in (0, 1) for n in names]  # Seed by seed.
  assert partial == list(range(1, 9)) and list(results) == names
  path = tmp_path / 'out.json'
  out = ablations.report({n: results[n][:1] for n in names}, 'configs/ablation.py', [0])
  path.write_text(json.dumps(out))
  done = ablations.earlier_runs(str(path), 'configs/ablation.py', {})
  trained.clear()
  again = ablations.run_all('configs/ablation.py', ablations.variants('configs/ablation.py'),
                            [0, 1], str(tmp_path), log=None, done=done)
  assert trained == [(n, 1) for n in names]  # Seed 0's runs read from the file.
  assert [r['seed'] for r in again[names[0]]] == [0, 1]
  with pytest.raises(ValueError, match='another --out'):
    ablations.earlier_runs(str(path), 'configs/ablation.py', {'data.image_size': 64})
  # Where the data is may differ between machines.
  assert ablations.earlier_runs(str(path), 'configs/ablation.py',
                                {'data.data_dir': '/elsewhere'}) == done
  assert ablations.earlier_runs(str(tmp_path / 'none.json'), 'configs/ablation.py', {}) == {}


def test_a_sigterm_ends_the_runner_without_the_stopped_run_and_the_rerun_resumes_it(
    tmp_path):
  """A real SIGTERM to this process while an ablation run trains: the run saves and stops,
  the runner returns without it (a stopped run is never reported as finished), and the
  rerun resumes it from its checkpoint to its final evaluation."""
  overrides = dict(TINY_ABLATION, num_train_steps=20, log_every_steps=1,
                   eval_every_steps=10, checkpoint_every_steps=10)
  variants = {'LRN, overlapping pool': ''}
  run_dir = tmp_path / f'{ablations.slug("LRN, overlapping pool")}_seed0'

  def sigterm_once_training():  # A logged step: train_and_evaluate's handler is set.
    metrics = run_dir / 'metrics.jsonl'
    while not (metrics.exists() and metrics.stat().st_size):
      time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGTERM)

  killer = threading.Thread(target=sigterm_once_training, daemon=True)
  killer.start()
  messages, reported = [], []
  results = ablations.run_all('configs/ablation.py', variants, [0], str(tmp_path), overrides,
                              log=messages.append, on_run=reported.append)
  killer.join(timeout=60)
  assert results == {} and reported == []
  assert 'SIGTERM' in messages[-1] and 'rerun' in messages[-1]
  train_rows, _ = reproduction.read_metrics(run_dir)
  stopped = train_rows[-1]['step']
  assert stopped < 20
  saved = [int(d) for d in os.listdir(checkpointing.checkpoint_dir(str(run_dir))) if d.isdigit()]
  assert max(saved) == stopped

  again = ablations.run_all('configs/ablation.py', variants, [0], str(tmp_path), overrides,
                            log=messages.append)
  run = again['LRN, overlapping pool'][0]
  train_rows, evals = reproduction.read_metrics(run_dir)
  assert [r['step'] for r in train_rows] == list(range(1, 21))  # Resumed, not restarted.
  assert run['budget']['steps'] == 20 and evals[-1]['step'] == 20
  assert run['top1_error'] == evals[-1]['eval_top1_error']


def test_curves_and_learning_rate_drops_by_hand():
  """Per-epoch means of the logged rows and the drops, against a hand computation."""
  train = [{'step': s, 'loss': float(s), 'train_top1_error': s / 10,
            'learning_rate': 0.01 if s <= 4 else (0.001 if s <= 7 else 0.0001)}
           for s in range(1, 10)]
  evals = [{'step': 3, 'eval_top1_error': 0.8, 'eval_top5_error': 0.4, 'eval_loss': 2.0,
            'eval_views': 1}, {'step': 9, 'eval_top1_error': 0.5, 'eval_top5_error': 0.2,
                               'eval_loss': 1.0, 'eval_views': 10}]
  assert reproduction.learning_rate_drops(train) == [4, 7]
  c = reproduction.curves(train, evals, steps_per_epoch=3)
  assert c['epoch'] == [1, 2, 3]
  assert c['train_loss'] == [2.0, 5.0, 8.0]  # (1+2+3)/3, (4+5+6)/3, (7+8+9)/3.
  assert c['train_top1_error'] == pytest.approx([0.2, 0.5, 0.8])
  assert c['learning_rate'] == [0.01, 0.001, 0.0001]
  assert c['eval_top1_error'] == [0.8, None, 0.5] and c['eval_views'] == [1, None, 10]


def test_the_curves_figure_is_drawn(tmp_path):
  """The figure of a record with centre-crop and 10-view evaluations and an epoch without
  one: a 960 x 256 PNG (12 x 3.2 inches at 80 dpi)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  c = {'epoch': [1, 2, 3], 'train_loss': [2.0, 1.5, 1.0], 'train_top1_error': [0.9, 0.7, 0.5],
       'learning_rate': [0.01, 0.01, 0.001], 'eval_top1_error': [0.8, None, 0.5],
       'eval_top5_error': [0.4, None, 0.2], 'eval_loss': [2.0, None, 1.0],
       'eval_views': [1, None, 10]}
  reproduction.plot({'name': 'tiny', 'curves': c}, str(tmp_path / 'curves.png'))
  with Image.open(tmp_path / 'curves.png') as image:
    assert image.format == 'PNG' and image.size == (960, 256)


def test_t_quantiles_are_students():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  for df, t in ablations.T_975.items():
    assert t == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)


def test_record_holds_device_budget_commit_and_curves(tmp_path):
  """reproduction.record of a short run: per-epoch curves from metrics.jsonl."""
  from tests import runs  # pylint: disable=g-import-not-at-top
  runs.run_main(tmp_path, '--config.eval_every_steps=2', steps=4)
  rec = json.loads(json.dumps(reproduction.record(str(tmp_path), name='tiny')))
  assert rec['device']['platform'] == 'cpu' and rec['seed'] == 0
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                        text=True).stdout.strip()
  assert rec['commit'].split('+')[0] == head
  assert rec['budget']['steps'] == 4 and rec['budget']['steps_per_epoch'] == 2
  c = rec['curves']
  assert c['epoch'] == [1, 2]
  train, evals = reproduction.read_metrics(str(tmp_path))
  assert c['train_loss'] == [train[0]['loss'], train[1]['loss']]  # Logged at 2 and 4.
  assert c['eval_top1_error'] == [e['eval_top1_error'] for e in evals]
  assert rec['final'] == evals[-1]
