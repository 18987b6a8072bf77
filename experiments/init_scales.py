"""Why an initialisation trains or sits at chance: activation and gradient scales at init.

    python -m experiments.init_scales --out=experiments/results/init_scales.json

For each initialisation (`INITS`: the paper's as written, the smallest changes to it, and
the schemes others trained with), one batch of real photographs (the embedded sample's
training crops, normalised as the paper: 0-255 minus the mean) goes through the network at
initialisation, dropout off. Per layer it reports:

* `std`: the activation's standard deviation over images, positions and units
  (post-ReLU for conv1-fc7; the logits);
* `image_share`: how much of that variation comes from the image, std over images of
  each unit / std over everything (0: every image gives the same activation; the
  network's output cannot depend on its input);
* `dead`: the share of units that are zero for every image of the batch;
* `update`: the relative size of the first SGD step on the layer's kernel,
  learning_rate * |dL/dW| / |W|, with the paper's learning rate 0.01.

Prints a table per initialisation and writes them all as JSON.
"""

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import cpu_settings
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import pixels
from configs import alexnet
from configs import sample

# name: config.model overrides; the first is the paper as written.
INITS = {
    'paper (N(0, 0.01), biases 1)': {},
    'paper, biases 0.1': {'init_bias': 0.1},
    'paper, biases 0': {'init_bias': 0.0},
    'BVLC (fc6, fc7 N(0, 0.005), biases 0.1)': {'init_scheme': 'bvlc', 'init_bias': 0.1},
    'original code (conv3-5 N(0, 0.03), biases 1)': {'init_scheme': 'original_code'},
    'He (inputs / 57.7)': {'init_scheme': 'he'},
}
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'logits')
KERNELS = {'conv1': 'conv1', 'conv2': 'conv2', 'conv3': 'conv3', 'conv4': 'conv4',
           'conv5': 'conv5', 'fc6': 'fc6', 'fc7': 'fc7', 'logits': 'fc8'}


def batch_of_photos(n=64, image_size=224, seed=0):
  """n training crops of the embedded sample: uint8 [n, s, s, 3] and labels [n]."""
  data = sample.get_config().data
  batches = input_pipeline.create_split(data, 'train', global_batch_size=n, train=True,
                                        seed=seed, image_size=image_size, shard=(0, 1))
  batch = next(batches)
  return batch['image'], batch['label']


def layer_stats(model_overrides, images, labels, num_classes=10, learning_rate=0.01):
  """{layer: {'std', 'image_share', 'dead', 'update'}} at initialisation (module doc)."""
  config = alexnet.get_config()
  config.model.num_classes = num_classes
  config.model.update(model_overrides)
  std = 57.7 if config.model.init_scheme == 'he' else 1.0  # As the 'he' preset.
  model = models.AlexNet(**config.model)
  x = pixels.normalize(jnp.asarray(images), None, pixels.CHANNEL_MEAN, std=std)
  params = model.init({'params': jax.random.key(0)}, x[:1], train=False)['params']
  feats = model.apply({'params': params}, x, train=False, return_features=True)

  def loss_fn(p):
    logits = model.apply({'params': p}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  stats = {}
  for layer in LAYERS:
    a = np.asarray(feats[layer], np.float64).reshape(len(images), -1)
    overall = a.std()
    kernel, grad = params[KERNELS[layer]]['kernel'], grads[KERNELS[layer]]['kernel']
    stats[layer] = {
        'std': float(overall),
        'image_share': float(a.std(axis=0).mean() / overall) if overall > 0 else 0.0,
        'dead': float((a.max(axis=0) <= 0).mean()) if layer != 'logits' else 0.0,
        'update': float(learning_rate * jnp.linalg.norm(grad) / jnp.linalg.norm(kernel)),
    }
  return {'loss': float(loss), 'layers': stats}


def format_table(name, result):
  lines = [f'{name}: initial loss {result["loss"]:.4f} (ln 10 = {np.log(10):.4f})',
           f'  {"layer":8s} {"std":>10s} {"image share":>12s} {"dead":>6s} {"update":>10s}']
  for layer, s in result['layers'].items():
    lines.append(f'  {layer:8s} {s["std"]:10.4g} {s["image_share"]:12.4f} {s["dead"]:6.2f} '
                 f'{s["update"]:10.3g}')
  return '\n'.join(lines)


def main(argv):
  del argv
  cpu_settings.apply()
  images, labels = batch_of_photos(flags.FLAGS.batch)
  results = {}
  for name, overrides in INITS.items():
    results[name] = dict(layer_stats(overrides, images, labels), overrides=overrides)
    print(format_table(name, results[name]), flush=True)
  if flags.FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(flags.FLAGS.out)), exist_ok=True)
    with open(flags.FLAGS.out, 'w') as f:
      json.dump({'batch': int(len(images)), 'image_size': 224, 'inits': results}, f,
                indent=1)


if __name__ == '__main__':
  flags.DEFINE_integer('batch', 64, 'Photographs in the batch.')
  flags.DEFINE_string('out', '', 'JSON file to write.')
  app.run(main)
