"""Synthetic data (alexnet_jax/synthetic.py) and a profile on request (config.profile_steps)."""

import glob
import os

import jax
import ml_collections
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alexnet_jax import partitioning
from alexnet_jax import train
from configs import sample
from tests import runs


def test_synthetic_batches_are_fixed_global_arrays_on_the_mesh():
  """One random batch made on the device, split over 'data', repeated; evaluation's pass
  covers synthetic_eval_examples, the last batch masked."""
  config = sample.get_config()
  config.data.dataset = 'synthetic'
  config.data.synthetic_eval_examples = 50
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'data': 2, 'model': 1}),
                                  jax.devices()[:2])
  batches = train.create_split(config, mesh, 'train', global_batch_size=8, train=True,
                               seed=0, image_size=67)
  first, second = next(batches), next(batches)
  assert first is second and batches.skipped == []
  assert first['image'].shape == (8, 67, 67, 3) and first['image'].dtype == np.uint8
  assert first['label'].shape == (8,) and first['lighting'].shape == (8, 3)
  assert first['image'].sharding.spec == jax.sharding.PartitionSpec('data')
  assert partitioning.global_batch(mesh, first) == first  # Already global: passed as it is.
  image, label = np.asarray(first['image']), np.asarray(first['label'])
  assert len(np.unique(image)) > 200 and set(label) <= set(range(10)) and len(set(label)) > 2
  # The pipeline's PCA lighting spread: std 0.1 * 121.78 along brightness, ~12 per channel.
  assert 2 < np.asarray(first['lighting']).std() < 30
  views = list(train.create_split(config, mesh, 'validation', global_batch_size=40,
                                  train=False, seed=0, image_size=67, num_views=10))
  assert [v['image'].shape for v in views] == [(40, 10, 67, 67, 3)] * 2
  assert [int(v['mask'].sum()) for v in views] == [40, 10]


def test_main_on_synthetic_data_trains_checkpoints_and_writes_a_profile(tmp_path):
  """main with data.dataset='synthetic' and a data_dir that does not exist, on a Python
  where TensorFlow cannot be imported (as on the device check's GPU machine): the real loop
  trains, logs (metrics.jsonl and TensorBoard), evaluates and checkpoints;
  profile_steps=(2, 3) writes a jax.profiler trace into the workdir and training goes on to
  the last step."""
  workdir = tmp_path / 'run'
  result = runs.run_main(workdir, '--config.data.dataset=synthetic',
                         f'--config.data.data_dir={tmp_path / "no_such_dir"}',
                         '--config.data.synthetic_examples=64',
                         '--config.data.synthetic_eval_examples=50',
                         '--config.profile_steps=(2, 3)', '--config.checkpoint_every_steps=2',
                         steps=5, path=[runs.without_tensorflow(tmp_path / 'no_tf')])
  lines = runs.metrics(workdir)
  assert [m['step'] for m in lines if 'loss' in m] == [2, 4, 5]
  events = event_accumulator.EventAccumulator(str(workdir / 'tensorboard'),
                                              size_guidance={'tensors': 0})
  events.Reload()  # TensorBoard's own reader: its scalars are metrics.jsonl's.
  assert [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in
          events.Tensors('loss')] == [(m['step'], m['loss']) for m in lines if 'loss' in m]
  assert [m['step'] for m in lines if 'eval_top1_error' in m] == [5]  # At the end.
  assert all(np.isfinite(m['loss']) for m in lines if 'loss' in m)
  assert 'eval (1 view(s), 50 examples)' in result.stderr
  assert runs.final_params(workdir)[0] == 5
  traces = glob.glob(str(workdir / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 10_000, traces
  assert 'Wrote a profile of steps 2-3' in result.stderr
  assert not (tmp_path / 'no_such_dir').exists()
