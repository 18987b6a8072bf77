"""A training run's record: learning curves per epoch, the final result, what produced it.

    python -m alexnet_jax.main --config=configs/imagenette.py:bvlc_biases \
        --config.data.data_dir=/tmp/imagenette --workdir=/tmp/runs/bvlc_biases
    python -m experiments.reproduction --workdir=/tmp/runs/bvlc_biases \
        --out=experiments/results/imagenette_bvlc_biases

reads the run's metrics.jsonl and its saved config and writes OUT.json (commit, device,
budget, seed, config, per-epoch curves: train loss, held-out top-1/top-5 error, learning
rate; the final evaluation) and OUT.png (the curves). Checkpoints are never part of it.
"""

import json
import os
import subprocess
import time

from absl import app
from absl import flags
import jax
import numpy as np

from alexnet_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit():
  """HEAD, with '+dirty' when tracked files differ from it; '' outside a git checkout."""
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + ('+dirty' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return ''


def device():
  d = jax.devices()[0]
  return {'platform': d.platform, 'device_kind': d.device_kind,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count()}


def read_metrics(workdir):
  """(train rows, eval rows) of workdir/metrics.jsonl, each sorted by step."""
  train, evals = [], []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      (evals if 'eval_top1_error' in row else train).append(row)
  return sorted(train, key=lambda r: r['step']), sorted(evals, key=lambda r: r['step'])


def learning_rate_drops(train_rows):
  """The logged steps after which the learning rate fell (by more than half): the last
  logged step at the old rate. A row's rate is the one its step's update used, so a drop
  at an epoch boundary that is a logged step (as in the configs) is placed exactly."""
  return [train_rows[i - 1]['step'] for i in range(1, len(train_rows))
          if train_rows[i]['learning_rate'] < 0.5 * train_rows[i - 1]['learning_rate']]


def curves(train_rows, eval_rows, steps_per_epoch):
  """Per epoch e (1-based, the epoch ending at step e * steps_per_epoch): the mean of the
  training loss and top-1 error logged in it (each row one batch's, every
  log_every_steps-th), the learning rate at its end, and the held-out errors of the
  evaluation at its end (centre crop; the last may be 10 views)."""
  epochs = {}
  for r in train_rows:
    e = -(-r['step'] // steps_per_epoch)
    epochs.setdefault(e, []).append(r)
  by_step = {r['step']: r for r in eval_rows}
  out = {k: [] for k in ('epoch', 'train_loss', 'train_top1_error', 'learning_rate',
                         'eval_top1_error', 'eval_top5_error', 'eval_loss', 'eval_views')}
  for e in sorted(epochs):
    rows = epochs[e]
    ev = by_step.get(e * steps_per_epoch) or by_step.get(rows[-1]['step'])
    out['epoch'].append(e)
    out['train_loss'].append(float(np.mean([r['loss'] for r in rows])))
    out['train_top1_error'].append(float(np.mean([r['train_top1_error'] for r in rows])))
    out['learning_rate'].append(rows[-1]['learning_rate'])
    for k in ('eval_top1_error', 'eval_top5_error', 'eval_loss', 'eval_views'):
      out[k].append(ev[k] if ev else None)
  return out


def record(workdir, name='', note='', commit=None):
  """The JSON-ready record of the run in `workdir` (module docstring)."""
  config = checkpointing.saved_config(workdir)
  train_rows, eval_rows = read_metrics(workdir)
  steps_per_epoch = config.eval_every_steps  # The configs evaluate once an epoch.
  final = eval_rows[-1] if eval_rows else None
  return {
      'name': name,
      'note': note,
      'commit': git_commit() if commit is None else commit,
      'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'device': device(),
      'seed': config.seed,
      'budget': {
          'steps': train_rows[-1]['step'] if train_rows else 0,
          'steps_per_epoch': steps_per_epoch,
          'epochs': (train_rows[-1]['step'] / steps_per_epoch) if train_rows else 0,
          'batch_size': config.batch_size, 'image_size': config.data.image_size,
          'resize_size': config.data.resize_size, 'dataset': config.data.dataset,
          'data_dir': config.data.data_dir, 'train_split': config.data.train_split,
          'eval_split': config.data.eval_split,
          'images_per_sec': float(np.median([r['images_per_sec'] for r in train_rows]))
                            if train_rows else None,
      },
      'learning_rate_drops_after_steps': learning_rate_drops(train_rows),
      'final': final,
      'best_centre_crop_top1_error': min((r['eval_top1_error'] for r in eval_rows
                                          if r.get('eval_views', 1) == 1), default=None),
      'curves': curves(train_rows, eval_rows, steps_per_epoch),
      'config': config.to_dict(),
  }


def plot(rec, path):
  """Train loss, held-out top-1/top-5 error and the learning rate against epochs."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  c = rec['curves']
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=80)
  axes[0].plot(c['epoch'], c['train_loss'])
  axes[0].set(xlabel='epoch', ylabel='training loss', title='loss')
  for k, label, colour in (('eval_top1_error', 'top-1', 'C0'), ('eval_top5_error', 'top-5', 'C1')):
    views = [(e, v, int(n or 1)) for e, v, n in zip(c['epoch'], c[k], c['eval_views'])
             if v is not None]
    centre = [(e, v) for e, v, n in views if n == 1]  # A line; multi-view results as dots.
    if centre:
      axes[1].plot(*zip(*centre), '-', color=colour, label=f'held-out {label}')
    for e, v, n in (p for p in views if p[2] > 1):
      axes[1].plot([e], [v], 'o', color=colour, label=f'held-out {label}, {n} views')
  axes[1].plot(c['epoch'], c['train_top1_error'], ':', label='training top-1')
  axes[1].set(xlabel='epoch', ylabel='error', ylim=(0, 1), title='error')
  axes[1].legend()
  axes[2].semilogy(c['epoch'], c['learning_rate'])
  axes[2].set(xlabel='epoch', ylabel='learning rate', title='learning rate')
  fig.suptitle(rec['name'] or 'run', fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  rec = record(f.workdir, name=f.name or os.path.basename(f.out), note=f.note,
               commit=f.commit or None)
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  with open(f.out + '.json', 'w') as fh:
    json.dump(rec, fh, indent=1)
  plot(rec, f.out + '.png')
  final = rec['final'] or {}
  print(f'{rec["name"]}: {rec["budget"]["epochs"]:.1f} epochs; final evaluation '
        f'({final.get("eval_views")} views) top-1 {final.get("eval_top1_error")}, top-5 '
        f'{final.get("eval_top5_error")}; wrote {f.out}.json and .png')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'The run.')
  flags.DEFINE_string('out', None, 'Output path without extension.')
  flags.DEFINE_string('name', '', 'Name in the record (default: the file name).')
  flags.DEFINE_string('note', '', 'Free text stored in the record.')
  flags.DEFINE_string('commit', '', 'The commit the run used (default: HEAD now).')
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
