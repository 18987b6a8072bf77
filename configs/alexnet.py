"""The paper's run: AlexNet on ImageNet (ILSVRC-2012), as in Krizhevsky et al. 2012.

Every hyperparameter of the recipe lives here; docs/reference.md gives the
sources. Where the paper's text and the original code (cuda-convnet, layers-145.cfg /
layer-params-145.cfg) differ, the default follows the paper's text and the comment names
the code's value; the 'original_code' preset switches to the code's.

Presets (comma-separated, `--config=configs/alexnet.py:original_code,bf16`):
  original_code         the code's quirks: LRN1 before ReLU, spatial norm after LRN2,
                        conv3-conv5 init std 0.03, biases at 2x the learning rate,
                        learning-rate drops at epochs 25, 51, 79 and 91 epochs.
  one_column            the same widths with no column split (no groups).
  one_column_half       the paper's one-column comparison net (Section 3.2; the code's
                        layers-145-half): conv1-conv4 half as wide, 48-128-192-192-256,
                        then 4096-4096, no column split.
  tanh                  tanh units in place of every ReLU (Section 3.1).
  no_conv4              the middle convolutional layer removed (Section 7).
  no_dropout            no dropout in fc6 and fc7 (Section 4.2).
  no_pca_lighting       no PCA lighting (Section 4.1).
  no_crop_flip          no random crops or reflections: the network trains and is tested
                        on the whole image resized to the crop size (Section 4.1).
  no_lrn                no local response normalisation.
  non_overlapping_pool  2x2 stride-2 pooling instead of 3x3 stride 2 (same output sizes).
  bf16                  bfloat16 compute, float32 parameters.
  he                    He-normal initialisation (zero biases) with inputs divided by the
                        pixels' standard deviation, for modern training.
  bvlc_biases           the paper's initialisation with the biases of conv2, conv4, conv5,
                        fc6, fc7 at 0.1 instead of 1: the one change Caffe's replication
                        made to train ("initialization to 1 gave flat loss"; measured here:
                        experiments/init_scales.py, docs/experiments.md).
  bvlc_init             Caffe's replication's whole initialisation: biases 0.1 and fc6, fc7
                        weights N(0, 0.005).
  caffe                 Caffe's replication, bvlc_alexnet, as its network and preprocessing
                        compute (BVLC/caffe models/bvlc_alexnet, docs/weights.md): LRN k = 1
                        with the window across both columns, 227 x 227
                        input with no padding in conv1, images resized to 256 x 256
                        ignoring the aspect ratio, BGR, Caffe's channel means, no PCA
                        lighting, centre-crop evaluation. `python -m alexnet_jax.convert`
                        writes its weights with this config.
"""

import ml_collections

PRESETS = ('original_code', 'one_column', 'one_column_half', 'no_lrn',
           'non_overlapping_pool', 'tanh', 'no_conv4', 'no_dropout', 'no_pca_lighting',
           'no_crop_flip', 'bf16', 'he', 'caffe', 'bvlc_biases', 'bvlc_init')


def get_config(arg=''):
  """Returns the ConfigDict; `arg` is a comma-separated list of PRESETS."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameters, dropout, data order and augmentation.

  # --- Network (fields of alexnet_jax.models.AlexNet) -----------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 1000
  config.model.columns = 2  # Two columns, one per GPU (Section 3.2); 1 = no split.
  config.model.lrn = True  # Section 3.3.
  config.model.lrn_size = 5  # n = 5.
  config.model.lrn_k = 2.0  # k = 2 (the code's minDiv).
  # alpha in the code's/Caffe's/PyTorch's convention, divided by lrn_size: alpha' = 2e-5.
  # The paper's text read literally (alpha' = 1e-4) is lrn_alpha = 5e-4.
  config.model.lrn_alpha = 1e-4
  config.model.lrn_beta = 0.75  # beta = 0.75.
  config.model.pool_window = 3  # Overlapping pooling z = 3, s = 2 (Section 3.4).
  config.model.pool_stride = 2
  config.model.dropout_rate = 0.5  # fc6 and fc7 (Section 4.2).
  # Output channels of conv1-conv5 and units of fc6, fc7, both columns together (3.5).
  config.model.widths = (96, 256, 384, 384, 256, 4096, 4096)
  config.model.activation = 'relu'  # 'tanh' for every ReLU (Section 3.1, Figure 1).
  config.model.removed_layer = ''  # 'conv3' | 'conv4' | 'conv5': one fewer (Section 7).
  # 'paper' | 'original_code' (conv3-5 std 0.03) | 'bvlc' (fc6-7 std 0.005) | 'he'.
  config.model.init_scheme = 'paper'
  config.model.init_bias = 1.0  # Biases of conv2, conv4, conv5, fc6, fc7 (Section 5).
  config.model.lrn1_before_relu = False  # Code: True (LRN1 on conv1's pre-activation).
  config.model.spatial_norm = False  # Code: True (5x5 norm after LRN2; not in the paper).
  config.model.conv1_padding = 'paper'  # 224 input padded (0, 3); 'valid' = Caffe's 227.
  config.model.lrn_across_columns = False  # LRN window inside a column (code); Caffe: True.
  # How LRN, max pooling and the column-local convolutions are computed: the same values
  # and gradients. 'auto': by backend (alexnet_jax.models.IMPLS; docs/network.md, "Switches").
  config.model.lrn_impl = 'auto'  # 'custom': hand-written gradient; 'xla': autodiff.
  config.model.pool_impl = 'auto'  # 'custom': hand-written gradient; 'xla': nn.max_pool.
  config.model.group_impl = 'auto'  # 'split': two convs; 'feature_group': one grouped.
  config.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.
  # Convolutions and matrix products of the steps: 'highest' computes float32 as float32,
  # as the paper's GPUs did; 'default' lets the platform choose (TF32 on NVIDIA GPUs since
  # Ampere, bfloat16 passes on TPUs; the same on CPUs). No effect on bfloat16 inputs.
  config.precision = 'highest'

  # --- Data ----------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # A TFDS name, 'folder' (root/<split>/<class>) or 'records' (prepare records; fastest),
  # or 'synthetic': fixed random batches made on the device, to time a machine
  # (alexnet_jax/synthetic.py).
  config.data.dataset = 'imagenet2012'
  config.data.data_dir = ''  # TFDS data_dir, or the folder root; '' = TFDS default.
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224  # Training crop; 227 with model.conv1_padding = 'valid'.
  config.data.resize_size = 256  # Shorter side to 256, centre 256 x 256 (Section 2).
  # 'shorter': as above; 'warp': the whole image to 256 x 256, aspect ratio ignored (Caffe).
  config.data.resize_mode = 'shorter'
  config.data.flip = True  # Random horizontal reflection (Section 4.1).
  config.data.pca_lighting_std = 0.1  # alpha_i ~ N(0, 0.1) per image (Section 4.1).
  # 'channel': channel_mean; 'image': the mean image `prepare mean` stores beside the
  # dataset; or a .npy file of a [h, w, 3] RGB mean image (relative: to the workdir of
  # the checkpoint whose config it is in).
  config.data.mean = 'channel'
  config.data.channel_mean = (127.3, 119.7, 104.9)  # RGB, 0-255 (cuda-convnet2).
  config.data.channel_order = 'rgb'  # What the network reads; 'bgr' for Caffe's weights.
  # Label i's name; () = the dataset's: the sorted class folders of the train split (or
  # of the evaluated split where there is no train split), or TFDS's label names.
  config.data.class_names = ()
  config.data.std = 1.0  # Inputs are divided by it: 1 (0-255 units) in the paper.
  config.data.eval_views = 10  # 10: corners, centre and mirrors (Section 4.1); 1: centre.
  config.data.on_bad_image = 'error'  # 'error' names the file; 'skip' skips and counts.
  config.data.deterministic = True  # Same order and augmentation on every run.
  config.data.cache = False  # Cache decoded examples in memory (small datasets).
  config.data.shuffle_buffer = 16 * 1024
  # dataset='synthetic': the examples of its train and eval splits (ILSVRC-2012's sizes).
  config.data.synthetic_examples = 1281167
  config.data.synthetic_eval_examples = 50000

  # --- Optimisation (Section 5) ---------------------------------------------------------
  config.batch_size = 128  # Global batch.
  config.eval_batch_size = 128  # Global; the last eval batch is padded and masked.
  config.learning_rate = 0.01
  config.bias_lr_multiplier = 1.0  # Code and Caffe: 2.0 (biases learn at 0.02).
  config.momentum = 0.9
  config.weight_decay = 5e-4  # On weights only, not biases, as the code.
  # 'plateau': divide by 10 when validation error stops improving, at most 3 times;
  # 'epochs': divide by 10 at `lr_drop_epochs` (code: 25, 51, 79); 'step': by 10 every
  # `lr_step_epochs`; 'cosine': linear warm-up then cosine (large batches).
  config.schedule = 'plateau'
  config.plateau_patience = 2  # Evaluations without improvement before a drop.
  config.plateau_max_drops = 3
  config.lr_drop_epochs = (25, 51, 79)
  config.lr_step_epochs = 30
  config.warmup_epochs = 5
  config.num_epochs = 90  # "Roughly 90 cycles through the training set".
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  # --- Mesh -----------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  # 2: a column per device, as the paper's two GPUs; 1: none; 0: choose, 2 wherever the
  # device count is even (and the net has two columns), else 1.
  config.mesh.model = 0
  config.mesh.data = -1  # -1: all remaining devices.

  # --- Loop, logging, checkpoints -------------------------------------------------------
  config.log_every_steps = 100
  config.eval_every_steps = 5000  # Centre-crop evaluation; 10 views at the end.
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.on_nan = 'stop'  # 'stop' at a NaN/inf loss; 'skip' skips the step and counts.
  config.distributed = False  # jax.distributed.initialize() (also if the env asks).
  # (start, stop): a jax.profiler trace of training steps start..stop into
  # workdir/profile (TensorBoard's profile plugin, Perfetto); () = none.
  config.profile_steps = ()

  return apply_presets(config, arg)


def apply_presets(config, arg):
  """`config` with the comma-separated PRESETS of `arg` applied in order."""
  for preset in filter(None, (arg or '').split(',')):
    _apply_preset(config, preset.strip())
  return config


def _apply_preset(config, preset):
  if preset == 'original_code':
    config.model.lrn1_before_relu = True
    config.model.spatial_norm = True
    config.model.init_scheme = 'original_code'
    config.bias_lr_multiplier = 2.0
    config.schedule = 'epochs'
    config.lr_drop_epochs = (25, 51, 79)
    config.num_epochs = 91
  elif preset == 'one_column':
    config.model.columns = 1
    config.mesh.model = 1
  elif preset == 'one_column_half':
    config.model.columns = 1
    config.model.widths = (48, 128, 192, 192, 256, 4096, 4096)
    config.mesh.model = 1
  elif preset == 'tanh':
    config.model.activation = 'tanh'
  elif preset == 'no_conv4':
    config.model.removed_layer = 'conv4'
  elif preset == 'no_dropout':
    config.model.dropout_rate = 0.0
  elif preset == 'no_pca_lighting':
    config.data.pca_lighting_std = 0.0
  elif preset == 'no_crop_flip':
    # The crop is the whole resized image: one position, so no translation, and no flip.
    # Applied after any change of image_size (configs/ablation.py applies presets last).
    config.data.resize_size = config.data.image_size
    config.data.flip = False
  elif preset == 'no_lrn':
    config.model.lrn = False
  elif preset == 'non_overlapping_pool':
    config.model.pool_window = 2
  elif preset == 'bf16':
    config.model.dtype = 'bfloat16'
  elif preset == 'he':
    config.model.init_scheme = 'he'
    config.data.std = 57.7  # He et al. assume unit-variance inputs: ImageNet's pixel std.
  elif preset == 'bvlc_biases':
    config.model.init_bias = 0.1
  elif preset == 'bvlc_init':
    config.model.init_scheme = 'bvlc'
    config.model.init_bias = 0.1
  elif preset == 'caffe':
    config.model.lrn_k = 1.0  # Caffe's LRNParameter default; alpha, beta, size as ours.
    config.model.lrn_across_columns = True
    config.model.conv1_padding = 'valid'
    config.data.image_size = 227
    config.data.resize_mode = 'warp'
    config.data.channel_order = 'bgr'
    # The ILSVRC-2012 mean image's channel means (BGR: 104.0, 116.7, 122.7); `convert
    # --mean=imagenet_mean.binaryproto` subtracts the mean image itself.
    config.data.channel_mean = (122.7, 116.7, 104.0)
    config.data.pca_lighting_std = 0.0  # Trained without relighting (Caffe's readme).
    config.data.eval_views = 1  # The published figure is the centre crop's.
  else:
    raise ValueError(f'Unknown preset {preset!r}; choose from {PRESETS}.')
