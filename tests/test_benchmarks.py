"""The benchmarks run and report; the speed-ups they led to compute the same gradients.

benchmarks/train_step.py, benchmarks/forward.py, benchmarks/paths.py and
benchmarks/end_to_end.py run in --fast mode (tiny batches, one timed step per repeat) as
docs/benchmarks.md's commands run them, and must write JSON with positive finite throughputs. Both
implementations of LRN and max pooling in models.py (hand-written gradients and XLA's
autodiff) are checked against PyTorch's autograd, an independent implementation.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet_jax import models
from tests import runs
from tests import torch_alexnet

REPO = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ('jax_img_per_s', 'peer_img_per_s', 'ratio', 'device', 'batch', 'dtype')


def run_benchmark(module, tmp_path, *flags):
  out = tmp_path / f'{module}.json'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # Not the tests' four emulated devices: the script decides.
  proc = subprocess.run(
      [sys.executable, '-m', f'benchmarks.{module}', '--fast', '--out', str(out), *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


FLOPS = {'train_step': 4.35e9, 'forward': 1.449e9}  # Per image (docs/reference.md).


# Each script path runs once by default (the training step on two devices, the forward
# pass on one); the other two settings with -m slow.
@pytest.mark.parametrize('module,mesh_model', [
    pytest.param('train_step', 1, marks=pytest.mark.slow), ('train_step', 2), ('forward', 1),
    pytest.param('forward', 2, marks=pytest.mark.slow)])
def test_benchmark_fast_mode_writes_results(module, mesh_model, tmp_path):
  result, stdout = run_benchmark(module, tmp_path, '--mesh_model', str(mesh_model),
                                 '--peak_tflops', '0.1')
  assert result['meta']['benchmark'] == module
  (row,) = result['rows']
  assert set(REQUIRED) <= set(row)
  for key in ('jax_img_per_s', 'peer_img_per_s', 'ratio'):
    assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
  assert row['ratio'] == pytest.approx(row['jax_img_per_s'] / row['peer_img_per_s'])
  assert row['batch'] == 2 and row['dtype'] == 'float32'
  assert row['mesh_model'] == mesh_model and row['device_count'] == mesh_model
  assert row['device'] and len(row['jax_repeats']) == len(row['peer_repeats']) == 2
  # MFU = images/s x FLOPs per image / peak FLOP/s of the devices used.
  peak = 0.1e12 * mesh_model
  assert row['jax_mfu'] == pytest.approx(row['jax_img_per_s'] * FLOPS[module] / peak)
  assert row['peer_mfu'] == pytest.approx(row['peer_img_per_s'] * FLOPS[module] / peak)
  assert 'ratio' in stdout and 'jax img/s' in stdout  # The printed table.


@pytest.mark.slow  # 35 s; run by hand with the benchmarks (docs/benchmarks.md).
def test_end_to_end_fast_mode_writes_results(tmp_path):
  """benchmarks/end_to_end.py: the pipeline feeding the real step, and the step alone."""
  out = tmp_path / 'e2e.json'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.end_to_end', '--fast', '--out',
                         str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert [r['format'] for r in result['rows']] == ['records', 'jpeg']
  for row in result['rows']:
    for key in ('end_to_end_img_per_s', 'step_img_per_s', 'eval_10_view_end_to_end_img_per_s',
                'eval_10_view_step_img_per_s'):
      assert math.isfinite(row[key]) and row[key] > 0, key
    assert row['end_to_end_ratio'] == pytest.approx(
        row['repeats_end_to_end_img_per_s'][0] / row['repeats_step_img_per_s'][0])
  for key in ('end_to_end_img_per_s', 'step_img_per_s', 'end_to_end_ratio'):
    assert result[key] == result['rows'][0][key]
  assert 'step alone img/s' in proc.stdout


@pytest.mark.slow  # 20 s; run by hand with the benchmarks.
def test_paths_benchmark_times_each_setting_against_ours(tmp_path):
  """benchmarks/paths.py (the A/B behind models.IMPLS) in --fast mode, two settings."""
  out = tmp_path / 'paths.json'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.paths', '--fast', '--image_size', '67',
       '--variants', 'custom,xla', '--out', str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  assert [(r['variant'], r['lrn_impl'], r['pool_impl'], r['group_impl']) for r in rows] == [
      ('custom', 'custom', 'custom', 'split'), ('xla', 'xla', 'xla', 'feature_group')]
  assert rows[0]['ratio_to_custom'] == 1.0
  for r in rows:
    assert len(r['repeats']) == 2 and all(v > 0 and math.isfinite(v) for v in r['repeats'])
    assert r['img_per_s'] == pytest.approx(float(np.median(r['repeats'])))
  assert rows[1]['ratio_to_custom'] == pytest.approx(
      float(np.median([x / c for x, c in zip(rows[1]['repeats'], rows[0]['repeats'])])))


# --- The speed-ups compute the same gradients as PyTorch's autograd -------------------


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('impl', ['custom', 'xla'])
@pytest.mark.parametrize('size,beta,groups', [(5, 0.75, 2), (5, 0.75, 1), (4, 0.6, 2)])
def test_lrn_gradient_matches_pytorch(size, beta, groups, impl):
  rng = np.random.default_rng(0)
  # After a ReLU, and large enough that the cross-channel term is ~20% of the gradient.
  x = np.maximum(rng.normal(0, 100, (2, 5, 6, 16)), 0).astype(np.float32)
  ct = rng.normal(size=x.shape).astype(np.float32)
  lrn = lambda v: models.local_response_norm(v, size=size, k=2.0, alpha=1e-4, beta=beta,
                                             groups=groups, impl=impl)
  y, vjp = jax.vjp(lrn, jnp.asarray(x))
  (dx,) = vjp(jnp.asarray(ct))

  tx = nchw(x).requires_grad_(True)
  ty = torch_alexnet.ColumnLRN(groups, size, 1e-4, beta, 2.0)(tx)
  ty.backward(nchw(ct))
  np.testing.assert_allclose(y, nhwc(ty), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('impl', ['custom', 'xla'])
@pytest.mark.parametrize('window,stride,shape', [
    (3, 2, (2, 13, 13, 4)), (3, 2, (2, 12, 11, 4)), (2, 2, (2, 8, 9, 4)),
    (3, 3, (1, 10, 10, 2))])
def test_max_pool_gradient_matches_pytorch_with_ties(window, stride, shape, impl):
  """Integer inputs tie often; the gradient must go to the first maximum, as PyTorch's."""
  rng = np.random.default_rng(1)
  x = rng.integers(0, 3, shape).astype(np.float32)
  pool = lambda v: models.max_pool(v, window, stride, impl)
  y = pool(jnp.asarray(x))
  ct = rng.normal(size=y.shape).astype(np.float32)
  (dx,) = jax.vjp(pool, jnp.asarray(x))[1](jnp.asarray(ct))

  tx = nchw(x).requires_grad_(True)
  ty = F.max_pool2d(tx, window, stride)
  ty.backward(nchw(ct))
  np.testing.assert_array_equal(y, nhwc(ty))
  np.testing.assert_allclose(dx, nhwc(tx.grad), rtol=1e-6, atol=1e-6)


def test_network_gradients_match_pytorch():
  """Every parameter's gradient of the loss (dropout off) equals the PyTorch peer's."""
  size, classes = 99, 10  # conv1 23 x 23 -> pool5 2 x 2: every layer, fc6's reordering.
  rng = np.random.default_rng(2)
  x = (rng.uniform(0, 255, (2, size, size, 3)) - 120).astype(np.float32)
  labels = np.array([3, 7])
  model = models.AlexNet(num_classes=classes, dropout_rate=0.0)
  params = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                      train=False)['params']

  def loss(p):
    logits = model.apply({'params': p}, jnp.asarray(x), train=True)
    return -jax.nn.log_softmax(logits)[jnp.arange(2), labels].mean()

  grads = torch_alexnet.flax_to_torch(jax.jit(jax.grad(loss))(params))
  net = torch_alexnet.AlexNet(num_classes=classes, dropout_rate=0.0)
  net.fc6 = torch.nn.Linear(256 * 2 * 2, 4096)
  net.load_state_dict(torch_alexnet.flax_to_torch(params))
  F.cross_entropy(net(nchw(x)), torch.from_numpy(labels)).backward()
  for name, p in net.named_parameters():
    want, got = p.grad.numpy(), grads[name].numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f'{name}: relative error {err:.1e}'


# The end-to-end part is benchmarks/end_to_end.py --fast, itself a slow test (above). The
# default run is on a Python without TensorFlow, as on the GPU machine lent to the check:
# every part but end_to_end (tf.data) runs, and end_to_end says why it does not.
@pytest.mark.parametrize('tensorflow', [
    False, pytest.param(True, marks=pytest.mark.slow)])
def test_device_check_dry_run_runs_every_part(tmp_path, tensorflow):
  """scripts/device_check.sh --dry-run: each part of the device check starts, runs at
  tiny sizes on the CPU and lands in the one JSON, as it must on an accelerator."""
  out = tmp_path / 'device_check.json'
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop('XLA_FLAGS', None)
  if not tensorflow:
    env['PYTHONPATH'] = runs.without_tensorflow(tmp_path / 'no_tf')
  names = 'tests,train_step,synthetic,end_to_end'
  proc = subprocess.run(['bash', 'scripts/device_check.sh', '--dry-run', '--out', str(out),
                         '--parts', names, '--budget_s', '1500',
                         '--workdir', str(tmp_path / 'synthetic')], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(out.read_text())
  parts = result['parts']
  assert ','.join(parts) == names
  ran = dict.fromkeys(parts, 'ok')
  if not tensorflow:
    ran['end_to_end'] = 'skipped'
    assert parts['end_to_end']['reason'] == 'not installed here: tensorflow'
  assert {name: p['status'] for name, p in parts.items()} == ran, (
      {name: p.get('output_tail') for name, p in parts.items()})
  assert result['meta']['dry_run'] and result['meta']['versions']['jax'] == jax.__version__
  tests = parts['tests']
  assert tests['tests'] >= 1 and tests['failures'] == tests['errors'] == 0
  rows = parts['train_step']['rows']
  assert [(r['dtype'], r['precision']) for r in rows] == [('float32', 'highest'),
                                                         ('bfloat16', 'default')]
  for r in rows:
    assert r['jax_img_per_s'] > 0 and r['peer_img_per_s'] > 0
    assert r['jax_mfu'] == pytest.approx(r['jax_img_per_s'] * FLOPS['train_step'] / 0.1e12)
  synthetic = parts['synthetic']
  assert sorted(synthetic['images_per_sec']) == ['2', '4'] and synthetic['checkpoints']
  assert any(f.endswith('.xplane.pb') and size > 0
             for f, size in synthetic['profile_files'].items())
  if tensorflow:
    assert parts['end_to_end']['end_to_end_ratio'] > 0


def test_device_check_skips_a_part_whose_modules_are_missing(monkeypatch):
  """A machine without TensorFlow (or PyTorch): the part says so and runs nothing."""
  from benchmarks import device_check  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(device_check.PARTS, 'end_to_end', (('jax', 'no_such_module_25'), 0.15))
  record = device_check.run_part('end_to_end', device_check.parse(['--dry-run']), '/nonexistent',
                                 60)
  assert record == {'status': 'skipped', 'reason': 'not installed here: no_such_module_25'}
