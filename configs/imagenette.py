"""The paper's network and recipe on Imagenette (10 ImageNet classes), from an image folder.

Imagenette (fast.ai) comes as ImageFolder-style JPEGs; with its training images in a tar:

    tar xf imagenette224-train.tar -C /tmp
    python -m alexnet_jax.prepare split-folder --src=/tmp/imagenette224/train \
        --out=/tmp/imagenette --holdout=0.1
    python -m alexnet_jax.main --config=configs/imagenette.py \
        --config.data.data_dir=/tmp/imagenette --workdir=/tmp/alexnet_imagenette

Presets of configs/alexnet.py apply: `--config=configs/imagenette.py:no_lrn`.
"""

from configs import alexnet


def get_config(arg=''):
  config = alexnet.get_config(arg)
  config.data.dataset = 'folder'
  config.data.data_dir = ''  # Required (--config.data.data_dir): root of train/, validation/.
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.model.num_classes = 10
  config.batch_size = 128
  config.num_epochs = 30
  # One epoch: 8,522 training images (90% of Imagenette by `prepare split-folder`) // 128.
  # The plateau schedule sees one evaluation an epoch.
  config.eval_every_steps = 66
  config.checkpoint_every_steps = 66
  config.log_every_steps = 22
  return config
