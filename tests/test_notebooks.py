"""The experiment notebooks run headlessly, end to end, at a tiny budget.

Each notebook is executed by a Jupyter kernel (nbclient) with its "parameters" cell
replaced, as papermill would; its last cell prints its machine-readable results, which the
tests parse. 67 x 67 crops of 76 x 76 images and a few steps: the network's structure at a
fraction of the cost.
"""

import json
import math
import os
import subprocess

from nbclient import NotebookClient
import nbformat
import pytest

from alexnet_jax import checkpointing
from experiments import ablations
from tests.conftest import REPO


def execute(name, parameters):
  """Runs experiments/<name> with its parameters cell set to `parameters`; the notebook."""
  nb = nbformat.read(REPO / 'experiments' / name, as_version=4)
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


def test_ablation_notebook(tmp_path):
  nb = execute('ablations.ipynb', '\n'.join([
      "DATA = ''", 'STEPS = 4', 'SEEDS = [0]', 'IMAGE_SIZE = 67', 'RESIZE_SIZE = 76',
      'BATCH = 8', 'EVAL_VIEWS = 1', 'EVAL_EVERY = 2', 'INCLUDE_ONE_COLUMN = False',
      f'WORKDIR = {str(tmp_path)!r}']))
  table = printed(nb, 'RESULT_TABLE_JSON=')
  assert [r['variant'] for r in table] == list(ablations.VARIANTS)
  for row in table:
    for k in ('top1_error', 'top5_error'):
      assert math.isfinite(row[k]) and 0 <= row[k] <= 1, row
    assert row['top5_error'] <= row['top1_error']
  # Every variant trained through train_and_evaluate in its own workdir, with the config
  # the variant names, and the table holds that run's final evaluation.
  for name, overrides in ablations.VARIANTS.items():
    run_dir = tmp_path / f'{ablations.slug(name)}_seed0'
    saved = checkpointing.saved_config(str(run_dir))
    assert saved.model.lrn == overrides.get('model.lrn', True)
    assert saved.model.pool_window == overrides.get('model.pool_window', 3)
    assert saved.data.image_size == 67 and saved.num_train_steps == 4
    _, evals = ablations.read_metrics(run_dir)
    assert [e['step'] for e in evals] == [2, 4]
    row = next(r for r in table if r['variant'] == name)
    assert row['top1_error'] == pytest.approx(evals[-1]['eval_top1_error'])
  assert len(images(nb)) >= 1  # The learning curves.


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


def test_summary_and_effects_by_hand():
  """Means, sample standard deviations and paired effects, against hand computations."""
  errors = {  # variant: [(seed, top-1, top-5)]
      'LRN, overlapping pool': [(0, 0.40, 0.10), (1, 0.44, 0.14)],
      'no LRN, overlapping pool': [(0, 0.43, 0.12), (1, 0.45, 0.13)],
      'LRN, non-overlapping pool': [(0, 0.41, 0.10), (1, 0.41, 0.16)],
      'no LRN, non-overlapping pool': [(1, 0.50, 0.20)],
  }
  results = {name: [{'seed': s, 'top1_error': t1, 'top5_error': t5} for s, t1, t5 in runs]
             for name, runs in errors.items()}
  rows = {r['variant']: r for r in ablations.summarize(results)}
  base = rows['LRN, overlapping pool']
  assert base['top1_error'] == pytest.approx(0.42)
  assert base['top1_std'] == pytest.approx(math.sqrt(2 * 0.02 ** 2 / 1))  # ddof=1.
  assert (base['top1_min'], base['top1_max']) == (0.40, 0.44)
  assert rows['no LRN, non-overlapping pool']['top1_std'] == 0  # One seed.
  effects = {e['feature']: e for e in ablations.effects(results)}
  # LRN: seed 0: 40-43 = -3, seed 1: 44-45 = -1 points; mean -2, std sqrt(2).
  assert effects['LRN']['top1'] == pytest.approx(-2.0)
  assert effects['LRN']['top1_std'] == pytest.approx(math.sqrt(2))
  # top-5: 10-12 = -2, 14-13 = +1: mean -0.5, std sqrt(1.5^2 + 1.5^2).
  assert effects['LRN']['top5'] == pytest.approx(-0.5)
  assert effects['LRN']['top5_std'] == pytest.approx(math.sqrt(4.5))
  # Overlapping pooling: 40-41 = -1, 44-41 = +3 (top-1); 0 and -2 (top-5).
  assert effects['overlapping pooling']['top1'] == pytest.approx(1.0)
  assert effects['overlapping pooling']['top5'] == pytest.approx(-1.0)
  assert effects['overlapping pooling']['seeds'] == [0, 1]
  assert (effects['LRN']['paper_top1'], effects['LRN']['paper_top5']) == (-1.4, -1.2)
  assert (effects['overlapping pooling']['paper_top1'],
          effects['overlapping pooling']['paper_top5']) == (-0.4, -0.3)
  table = ablations.format_table(ablations.summarize(results), ablations.effects(results))
  assert '| LRN, overlapping pool | 2 | 42.0 ± 2.8 | 12.0 ± 2.8 |' in table
  assert '| no LRN, non-overlapping pool | 1 | 50.0 | 20.0 |' in table
  assert '| LRN | -2.0 ± 1.4 | -0.5 ± 2.1 | -1.4 | -1.2 |' in table


def test_report_records_device_budget_and_commit():
  config = ablations.make_config({}, seed=0, steps=7, base=ablations.base_config(
      '', batch_size=8, image_size=67, resize_size=76, eval_views=1))
  results = {name: [{'seed': 0, 'top1_error': 0.5, 'top5_error': 0.1, 'seconds': 2.0,
                     'workdir': '/x', 'curves': {}}] for name in ablations.VARIANTS}
  out = json.loads(json.dumps(ablations.report(results, config, 7, [0], note='n')))
  assert out['device']['platform'] == 'cpu' and out['device']['device_kind']
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                        text=True).stdout.strip()
  assert out['commit'].split('+')[0] == head
  assert out['budget'] == {**out['budget'], 'steps': 7, 'seeds': [0], 'batch_size': 8,
                           'image_size': 67, 'resize_size': 76, 'eval_views': 1,
                           'learning_rate': 0.0025, 'init_scheme': 'he', 'seconds': 8.0}
  assert [r['variant'] for r in out['table']] == list(ablations.VARIANTS)
  assert 'workdir' not in out['runs']['LRN, overlapping pool'][0]
