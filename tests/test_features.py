"""Feature extraction from checkpoints that `main` wrote on a model=2 mesh."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpointing
from alexnet_jax import features
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import pixels
from configs import sample
from tests.conftest import REPO
from tests.runs import assert_trees_equal
from tests.runs import run_main


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """Two training steps of main on the sample, columns split over two devices."""
  workdir = tmp_path_factory.mktemp('run')
  run_main(workdir, '--config.mesh.model=2', '--config.eval_every_steps=100', steps=2,
           devices=2)
  return workdir


def test_restored_features_equal_the_live_models(workdir):
  """The model=2 checkpoint restores on one device, and its features are the network's."""
  model, params, config = inference.load(workdir)
  assert config.model.num_classes == 10 and config.mesh.model == 2
  assert all(len(p.sharding.device_set) == 1 for p in jax.tree.leaves(params))
  data = inference.data_config(config)
  batch = next(input_pipeline.create_split(data, 'validation', global_batch_size=4,
                                           train=False, image_size=67, shard=(0, 1)))
  fn = inference.make_features_fn(model, ['pool5', 'fc7', 'logits'],
                                input_pipeline.mean(data, 67), config.data.std)
  got = fn(params, batch['image'])
  x = pixels.normalize(batch['image'], None, input_pipeline.mean(data, 67),
                       std=config.data.std)
  live = model.apply({'params': params}, x, train=False, return_features=True)
  # One jit-compiled program against op-by-op execution: XLA may fuse and reorder float32
  # sums differently (seen: 2e-6 on fc7 values of 0.07); a wrong or misplaced parameter
  # differs at order 1.
  for k in got:
    np.testing.assert_allclose(got[k], live[k], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got['logits'], model.apply({'params': params}, x, train=False),
                             rtol=1e-5, atol=1e-5)
  assert got['pool5'].shape == (4, 1, 1, 256) and got['fc7'].shape == (4, 4096)


def test_cli_writes_features_labels_and_names(workdir, tmp_path):
  out = tmp_path / 'feats.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.features', f'--workdir={workdir}',
       '--layer=fc6,fc7', '--split=validation', f'--out={out}', '--batch_size=48'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  feats = np.load(out)
  assert set(feats.files) == {'fc6', 'fc7', 'label', 'file_name', 'class_names'}
  assert feats['fc6'].shape == feats['fc7'].shape == (200, 4096)
  assert np.isfinite(feats['fc7']).all() and (feats['fc7'] >= 0).all()  # Post-ReLU.
  names = list(feats['file_name'])
  assert len(set(names)) == 200
  classes = list(feats['class_names'])
  assert classes == sorted(os.listdir(os.path.join(sample.SAMPLE_DIR, 'validation')))
  assert all(classes[l] == n.split(os.sep)[-2] for l, n in zip(feats['label'], names))


def test_unknown_layer_is_a_clear_error():
  with pytest.raises(ValueError, match='Unknown layer'):
    inference.make_features_fn(models.AlexNet(num_classes=10), ['fc9'], jnp.zeros(3))


def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_read(uninterrupted,
                                                                       tmp_path, caplog):
  """The same fallback as training's, but a reader moves nothing (a run may be writing)."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  state = os.path.join(checkpointing.checkpoint_dir(workdir), '6', 'state')
  for d, _, files in os.walk(state):  # Every array data file cut in half.
    for f in files:
      if os.path.basename(d) == 'd':
        os.truncate(os.path.join(d, f), os.path.getsize(os.path.join(d, f)) // 2)
  with caplog.at_level('ERROR'):
    _, params, _ = inference.load(str(workdir))
  assert 'Checkpoint' in caplog.text and '/6 is damaged' in caplog.text
  assert 'using the previous one' in caplog.text
  _, expected, _ = inference.load(str(uninterrupted), step=4)
  assert_trees_equal(jax.device_get(expected), jax.device_get(params))
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ['4', '6']
