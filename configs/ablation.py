"""The ablations of Sections 3.3 and 3.4 on Imagenette, at reduced scale
(docs/experiments.md): LRN on/off x overlapping (3/2) / non-overlapping (2/2) pooling.

Each variant is a preset of configs/alexnet.py, and each run one command:

    python -m alexnet_jax.main --config=configs/ablation.py:no_lrn --config.seed=1 \
        --config.data.data_dir=/tmp/imagenette --workdir=/tmp/ablations/no_lrn_seed1

`python -m experiments.ablations --config=configs/ablation.py ...` runs every variant with
every seed and computes the effects (experiments/ablations.py).

The scale: Imagenette's 8,522 training images (the 90% split of `prepare split-folder`),
112 x 112 crops of 128 x 128 images (a quarter of the paper's pixels: about four times
faster), 12 epochs with the learning rate divided by 10 after epoch 8 (a fixed schedule, so
every variant gets the same one), the recipe's initialisation (`RECIPE`), ten-view
evaluation on the 947 held-out images at the end.
"""

from configs import imagenette

# The initialisation that trains (docs/experiments.md: the paper's leaves chance only
# with its biases at 0.1, as Caffe's replication found).
RECIPE = 'bvlc_biases'
# name -> presets; the first is the paper's network.
VARIANTS = {
    'LRN, overlapping pool': '',
    'no LRN, overlapping pool': 'no_lrn',
    'LRN, non-overlapping pool': 'non_overlapping_pool',
    'no LRN, non-overlapping pool': 'no_lrn,non_overlapping_pool',
}
ONE_COLUMN = {'one column': 'one_column'}


def get_config(arg=''):
  """`arg`: presets of configs/alexnet.py, e.g. 'no_lrn' or 'no_lrn,non_overlapping_pool'."""
  config = imagenette.get_config(','.join(filter(None, [RECIPE, arg])))
  config.data.image_size = 112
  config.data.resize_size = 128
  config.data.cache = True  # 90 MB of JPEGs in memory.
  config.schedule = 'epochs'
  config.lr_drop_epochs = (8,)
  config.num_epochs = 12
  config.keep_checkpoints = 1
  return config
