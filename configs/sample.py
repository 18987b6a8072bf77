"""The embedded default: the paper's network and recipe on the committed sample.

data/sample holds 700 real ImageNet photographs of Imagenette's 10 classes (50 training and
20 held-out images per class, cut by `python -m alexnet_jax.prepare sample`), so a fresh
clone trains with no download:

    python -m alexnet_jax.main --config=configs/sample.py --workdir=/tmp/alexnet_sample

Sized to finish in minutes on a 2-core CPU (docs/training.md has the measured time). The
network, augmentation, optimizer and evaluation are the paper's; the initialisation is He's
and the learning rate is scaled to the batch of 32 (why: below).
"""

import os

from configs import alexnet

# The embedded sample, committed in the repo: data/sample/{train,validation}/<wnid>/*.JPEG.
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'data', 'sample')


def get_config(arg=''):
  # He initialisation (and inputs divided by the pixels' std) at 0.0025: the paper's
  # N(0, 0.01) start, with its biases 1 or BVLC's 0.1, learns too slowly or not at all in
  # this budget, and He at 0.01 settles at chance (docs/training.md has the runs).
  config = alexnet.get_config(','.join(filter(None, ['he', arg])))
  config.data.dataset = 'folder'
  config.data.data_dir = SAMPLE_DIR
  config.data.cache = True  # 5 MB of JPEGs: keep the bytes in memory.
  config.model.num_classes = 10
  config.batch_size = 32
  config.learning_rate = 0.01 * 32 / 128  # The paper's rate for its batch of 128, scaled.
  config.eval_batch_size = 40
  config.num_train_steps = 120
  config.log_every_steps = 10
  config.eval_every_steps = 60
  config.checkpoint_every_steps = 60
  config.keep_checkpoints = 2
  return config
