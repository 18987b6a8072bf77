"""The experiment notebooks run headlessly, end to end, at a tiny budget.

Each notebook is executed by a Jupyter kernel (nbclient) with the test's parameters after
its "parameters" cell, as papermill would inject them; its last cell prints its
machine-readable results, which the tests parse. 67 x 67 crops of 76 x 76 images and a few
steps: the network's structure at a fraction of the cost.
"""

import json
import math
import os
import pathlib
import re
import shutil
import subprocess

from nbclient import NotebookClient
import nbformat
import pytest

from alexnet_jax import checkpointing
from alexnet_jax import evaluate
from configs import ablation
from configs import sample
from experiments import claims
from experiments import reproduction
from tests.conftest import REPO


def execute(name, parameters, root=REPO):
  """Runs <root>/experiments/<name> as committed, its "parameters" cell followed by
  `parameters` (as papermill would inject them; the committed "injected-parameters" cell,
  if any, still runs after them); the notebook."""
  nb = nbformat.read(root / 'experiments' / name, as_version=4)
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'exactly one cell tagged "parameters"'
  cells[0].source += '\n' + parameters
  env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  client = NotebookClient(nb, kernel_name='python3', timeout=600,
                          resources={'metadata': {'path': str(root)}})
  client.execute(env=env)
  return nb


def fresh_copy(dest):
  """The repository's files as a fresh clone has them (no caches, runs or virtualenv)."""
  def ignore(folder, names):
    top = pathlib.Path(folder) == REPO
    return [n for n in names
            if n in ('.git', '.venv', '__pycache__', '.pytest_cache', '.ipynb_checkpoints')
            or n.endswith(('.pyc', '.egg-info'))
            or (top and (n == 'tmp' or n.startswith('workdir')))]
  shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
  return dest


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


TINY = {'data.image_size': 67, 'data.resize_size': 76, 'batch_size': 8, 'eval_batch_size': 40,
        'num_train_steps': 4, 'eval_every_steps': 2, 'checkpoint_every_steps': 4,
        'log_every_steps': 1}


def test_claims_notebook_shows_the_committed_result():
  """As a reader opens it (TRAIN = False): the table, every row as the result file's runs
  analysed by this checkout, and the training time those runs' budgets add up to."""
  nb = execute('claims.ipynb', '')
  with open(REPO / 'experiments' / 'results' / 'claims.json') as f:
    saved = json.load(f)
  keys = ('claim', 'metric', 'effect', 'ci', 'seeds', 'verdict')
  assert printed(nb, 'CLAIMS_JSON=') == json.loads(json.dumps(
      [{k: r[k] for k in keys} for r in claims.analyse(ablation.CLAIMS, saved['runs'])]))
  hours = sum(r['budget']['steps'] * r['budget']['batch_size'] / r['budget']['images_per_sec']
              for rs in [*saved['runs'].values(), saved['reproduction_runs']] for r in rs) / 3600
  text = '\n'.join(str(o.get('data', {}).get('text/markdown', '')) for c in nb.cells
                   for o in c.get('outputs', []))
  assert f'{hours:.1f} hours of training' in text
  assert len(images(nb)) >= 1  # The learning curves.


# 75 s: slow. The default suite trains through the claims runner in test_claims.py.
@pytest.mark.slow
def test_claims_notebook_trains(tmp_path):
  """Trains the dropout claim's two runs at a tiny budget and shows its table row."""
  nb = execute('claims.ipynb', '\n'.join([
      'TRAIN = True', "CLAIMS = ['dropout']", f'DATA_DIR = {sample.SAMPLE_DIR!r}',
      f'OVERRIDES = {TINY!r}', f'WORKDIR = {str(tmp_path)!r}', 'MAX_RUNS = 2']))
  (row,) = printed(nb, 'CLAIMS_JSON=')
  assert row['claim'] == 'dropout' and row['metric'] == 'overfit_gap' and row['seeds'] == [0]
  assert row['verdict'] == 'not resolved' and row['ci'] is None  # One seed: no interval.
  # The runs trained through train_and_evaluate with the presets' configs, and the row's
  # effect is their gaps' difference (held-out centre minus training error, points).
  gaps = []
  for run_dir, dropout in (('paper_seed0', 0.5), ('no_dropout_seed0', 0.0)):
    saved = checkpointing.saved_config(str(tmp_path / run_dir))
    assert saved.model.dropout_rate == dropout and saved.num_train_steps == 4
    _, evals = reproduction.read_metrics(str(tmp_path / run_dir))
    assert [e['step'] for e in evals] == [2, 4] and evals[-1]['eval_views'] == 10
    scored = evaluate.evaluate(str(tmp_path / run_dir), split='train', progress=False)
    gaps.append(100 * (evals[-1]['eval_centre_top1_error'] - scored['top1_error']))
  assert row['effect'] == pytest.approx(gaps[0] - gaps[1], abs=1e-6)
  assert len(images(nb)) >= 1  # The learning curves.


def test_the_committed_claims_notebook_shows_the_committed_result():
  """As committed (its injected cell too), the notebook's table is the result file's."""
  nb = nbformat.read(REPO / 'experiments' / 'claims.ipynb', as_version=4)
  with open(REPO / 'experiments' / 'results' / 'claims.json') as f:
    committed = json.load(f)
  (text,) = [o['text'] for c in nb.cells for o in c.get('outputs', [])
             if 'CLAIMS_JSON=' in o.get('text', '')]
  shown = json.loads(text.split('CLAIMS_JSON=')[1].splitlines()[0])
  assert [(r['claim'], r['verdict'], r['seeds']) for r in shown] == [
      (r['claim'], r['verdict'], r['seeds']) for r in committed['claims']]
  assert claims.format_table(committed['claims']).splitlines()[0].startswith('| claim |')


def test_features_notebook_runs_as_committed_on_a_fresh_copy(tmp_path):
  """Every committed cell, the injected one (the run the outputs are of, not on this
  machine) included, on a copy of the repository's files; only the budget is made tiny.
  With WORKDIR at its default, it trains a short run on the sample in a temporary folder,
  names the run its committed outputs are of, and deletes the folder."""
  root = fresh_copy(tmp_path / 'repo')
  nb = execute('features.ipynb', '\n'.join([
      'STEPS = 4', 'IMAGE_SIZE = 67', 'RESIZE_SIZE = 76', 'NUM_QUERIES = 3']), root=root)
  injected = [c for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', [])]
  assert len(injected) == 1 and 'EXECUTED_WORKDIR' in injected[0].source
  text = '\n'.join(o.get('text', '') for c in nb.cells for o in c.get('outputs', []))
  trained = re.search(r'^(\S+): 2 column\(s\), 67 px, 10 classes, data (\S+)$', text, re.M)
  assert trained, text[:2000]
  assert os.path.basename(trained[1]).startswith('features_')
  assert trained[2] == str(root / 'data' / 'sample')
  assert not os.path.exists(trained[1])  # The temporary run, deleted at the end.
  assert ('The outputs committed with this notebook are of /tmp/runs/bvlc_long; these are '
          'of the run above.') in text
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


def test_features_notebook_refuses_a_workdir_without_checkpoints(tmp_path):
  """A mistyped WORKDIR is an error, not a short run on the sample shown in its place."""
  from nbclient.exceptions import CellExecutionError  # pylint: disable=g-import-not-at-top
  missing = tmp_path / 'no_such_run'
  with pytest.raises(CellExecutionError, match='holds no checkpoints'):
    execute('features.ipynb', f"WORKDIR = {str(missing)!r}\nDATA = ''\nSTEPS = 4")
  assert not missing.exists()


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
