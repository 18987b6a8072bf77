"""The config check, declared once: every entry point calls `validate` before any compute.

`validate(config)` checks the values, alone and against each other (no I/O, no devices);
`validate_mesh(config, mesh)` what depends on the mesh partitioning.create_mesh built;
`check_data(config)` checks the dataset the config names (its splits, its classes against
model.num_classes, enough examples for a batch, the mean image). Each refusal is a
ValueError (FileNotFoundError for missing data) that names the field and the fix. The
library's functions assume a validated config and do not check again.
"""

from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optimizer
from alexnet_jax import pixels
from alexnet_jax import synthetic

PRECISIONS = ('highest', 'default')  # config.precision: steps.with_precision.


def _get(config, field):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _rules(config):
  """(field, ok, requirement) for every field with a constraint of its own."""
  m, d = config.model, config.data
  # What data_dir must name; synthetic data has none (and loads no data source, nor TF).
  data_dir = '' if d.dataset == synthetic.DATASET else input_pipeline.source(d).data_dir
  return [
      ('model.num_classes', m.num_classes >= 2, 'must be >= 2'),
      ('model.columns', m.columns in (1, 2), 'must be 1 or 2'),
      ('model.lrn_size', m.lrn_size >= 1, 'must be >= 1 (the paper: 5)'),
      ('model.lrn_k', m.lrn_k > 0, 'must be > 0 (the paper: 2; Caffe: 1)'),
      ('model.lrn_alpha', m.lrn_alpha >= 0, 'must be >= 0 (the paper: 1e-4)'),
      ('model.lrn_beta', m.lrn_beta >= 0, 'must be >= 0 (the paper: 0.75)'),
      ('model.pool_window', m.pool_window >= 1, 'must be >= 1 (the paper: 3)'),
      ('model.pool_stride', m.pool_stride >= 1, 'must be >= 1 (the paper: 2)'),
      ('model.dropout_rate', 0 <= m.dropout_rate < 1, 'must be in [0, 1)'),
      ('model.widths', len(m.widths) == len(models.WIDTHS) and all(
          int(w) == w and w > 0 and w % m.columns == 0 for w in m.widths),
       f'must be {len(models.WIDTHS)} positive widths (conv1-conv5, fc6, fc7), each a '
       f'multiple of model.columns; the paper: {models.WIDTHS}'),
      ('model.activation', m.activation in models.ACTIVATIONS,
       f'must be one of {models.ACTIVATIONS}'),
      ('model.removed_layer', m.removed_layer in ('',) + models.REMOVABLE,
       f"must be '' or one of {models.REMOVABLE}"),
      ('model.init_scheme', m.init_scheme in models.INITS, f'must be one of {models.INITS}'),
      ('model.conv1_padding', m.conv1_padding in models.CONV1_PADDINGS,
       f'must be one of {models.CONV1_PADDINGS}'),
      ('model.lrn_impl', m.lrn_impl in models.LRN_IMPLS, f'must be one of {models.LRN_IMPLS}'),
      ('model.pool_impl', m.pool_impl in models.POOL_IMPLS,
       f'must be one of {models.POOL_IMPLS}'),
      ('model.group_impl', m.group_impl in models.GROUP_IMPLS,
       f'must be one of {models.GROUP_IMPLS}'),
      ('model.dtype', m.dtype in models.DTYPES, f'must be one of {models.DTYPES}'),
      ('precision', config.precision in PRECISIONS,
       f"must be one of {PRECISIONS} ('highest': float32 as float32, the paper's)"),
      ('data.dataset', bool(d.dataset), 'must name a TFDS dataset or be one of '
       f'{tuple(input_pipeline.SOURCES) + (synthetic.DATASET,)}'),
      ('data.data_dir', bool(d.data_dir) or not data_dir,
       f'must name {data_dir} when dataset={d.dataset!r}'),
      ('data.resize_size', d.resize_size >= 1, 'must be >= 1 (the paper: 256)'),
      ('data.image_size', 0 < d.image_size <= d.resize_size,
       'must be positive and at most data.resize_size'),
      ('data.eval_views', d.eval_views in (1, 10), 'must be 1 (centre) or 10 (the paper)'),
      ('data.on_bad_image', d.on_bad_image in ('error', 'skip'), "must be 'error' or 'skip'"),
      ('data.mean', d.mean in ('channel', 'image') or d.mean.endswith('.npy'),
       "must be 'channel', 'image' or a .npy file holding a [h, w, 3] RGB mean image"),
      ('data.channel_order', d.channel_order in pixels.CHANNEL_ORDERS,
       f'must be one of {pixels.CHANNEL_ORDERS}'),
      ('data.resize_mode', d.resize_mode in pixels.RESIZE_MODES,
       f'must be one of {pixels.RESIZE_MODES}'),
      ('data.std', d.std > 0, 'must be positive'),
      ('data.pca_lighting_std', d.pca_lighting_std >= 0, 'must be >= 0'),
      ('data.shuffle_buffer', d.shuffle_buffer >= 1, 'must be >= 1'),
      ('data.synthetic_examples', d.synthetic_examples >= 1, 'must be >= 1'),
      ('data.synthetic_eval_examples', d.synthetic_eval_examples >= 1, 'must be >= 1'),
      ('data.train_split', bool(d.train_split), 'must name a split'),
      ('data.eval_split', bool(d.eval_split), 'must name a split'),
      ('batch_size', config.batch_size >= 1, 'must be >= 1'),
      ('eval_batch_size', config.eval_batch_size >= 1, 'must be >= 1'),
      ('learning_rate', config.learning_rate > 0, 'must be positive'),
      ('bias_lr_multiplier', config.bias_lr_multiplier >= 0, 'must be >= 0'),
      ('momentum', 0 <= config.momentum < 1, 'must be in [0, 1)'),
      ('weight_decay', config.weight_decay >= 0, 'must be >= 0'),
      ('schedule', config.schedule in optimizer.SCHEDULES,
       f'must be one of {optimizer.SCHEDULES}'),
      ('plateau_patience', config.plateau_patience >= 1, 'must be >= 1'),
      ('plateau_max_drops', config.plateau_max_drops >= 0, 'must be >= 0'),
      ('lr_drop_epochs', list(config.lr_drop_epochs) == sorted(config.lr_drop_epochs)
       and all(e > 0 for e in config.lr_drop_epochs), 'must be increasing and positive'),
      ('lr_step_epochs', config.lr_step_epochs >= 1, 'must be >= 1'),
      ('warmup_epochs', config.warmup_epochs >= 0, 'must be >= 0'),
      ('num_epochs', config.num_epochs > 0 or config.num_train_steps > 0,
       'must be positive unless num_train_steps is'),
      ('mesh.model', config.mesh.model in (0, 1, 2),
       'must be 2 (a column per device, as the paper), 1 (no model parallelism) or 0 '
       '(2 where the device count allows)'),
      ('mesh.data', config.mesh.data == -1 or config.mesh.data >= 1,
       'must be -1 (all remaining devices) or >= 1'),
      ('distributed', isinstance(config.distributed, bool), 'must be True or False'),
      ('log_every_steps', config.log_every_steps >= 1, 'must be >= 1'),
      ('eval_every_steps', config.eval_every_steps >= 1, 'must be >= 1'),
      ('checkpoint_every_steps', config.checkpoint_every_steps >= 1, 'must be >= 1'),
      ('keep_checkpoints', config.keep_checkpoints >= 1, 'must be >= 1'),
      ('on_nan', config.on_nan in ('stop', 'skip'), "must be 'stop' or 'skip'"),
      ('profile_steps', tuple(config.profile_steps) == () or (
          len(config.profile_steps) == 2 and 1 <= config.profile_steps[0]
          <= config.profile_steps[1]), 'must be () (no profile) or (start, stop) with '
       '1 <= start <= stop, e.g. --config.profile_steps="(10, 15)"'),
  ]


def feature_map_sides(model_config, image_size):
  """Spatial sides after conv1, pool1, pool2 and pool5 for `image_size` inputs; a side
  <= 0 means the input is too small for that layer."""
  m = model_config
  pad = 3 if m.conv1_padding == 'paper' else 0  # The original code's (0, 3) padding.
  conv1 = (image_size + pad - 11) // 4 + 1 if image_size + pad >= 11 else 0
  pool = lambda x: (x - m.pool_window) // m.pool_stride + 1 if x >= m.pool_window else 0
  pool1 = pool(conv1)
  pool2 = pool(pool1)
  return conv1, pool1, pool2, pool(pool2)


def smallest_image_size(model_config):
  """The smallest input side for which pool5 is at least 1 x 1."""
  return next(s for s in range(1, 4096) if feature_map_sides(model_config, s)[-1] >= 1)


def validate(config):
  """Raises ValueError naming the first field whose value cannot run, and how to fix it."""
  for field, ok, requirement in _rules(config):
    if not ok:
      raise ValueError(f'config.{field}={_get(config, field)!r} {requirement}.')
  m, d = config.model, config.data
  if feature_map_sides(m, d.image_size)[-1] < 1:
    raise ValueError(
        f'config.data.image_size={d.image_size} is too small for the network (conv1 '
        f'{m.conv1_padding} padding, {m.pool_window}/{m.pool_stride} pooling): pool5 would '
        f'be empty. The smallest that works is {smallest_image_size(m)}; the paper uses 224.')


def validate_mesh(config, mesh):
  """The checks that depend on the ('data', 'model') mesh the run uses."""
  m = config.model
  data, model = mesh.shape['data'], mesh.shape['model']
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % data:
      raise ValueError(f'config.{name}={config[name]} must be a multiple of the data axis '
                       f'size {data} (the mesh is data={data} x model={model}).')
  if model == 2 and m.columns == 1:
    raise ValueError('config.model.columns=1 (no column split) runs with config.mesh.model=1 '
                     '(or 0).')
  if model == 2 and m.num_classes % 2:
    raise ValueError(f'config.model.num_classes={m.num_classes} must be even to split fc8 '
                     'over the model axis; set config.mesh.model=1.')


def check_data(config):
  """Checks the dataset before any compute: splits, classes, size. Returns the number of
  training examples."""
  d = config.data
  if d.dataset == synthetic.DATASET:
    return synthetic.check(config)
  names = input_pipeline.class_names(d)  # Raises, saying how to prepare, if missing.
  for field in ('train_split', 'eval_split'):
    split = d[field]
    available = input_pipeline.splits(d)
    if split not in available:
      raise ValueError(f'config.data.{field}={split!r}: the dataset {input_pipeline.describe(d)} '
                       f'has the splits {available}.')
  n = len(names)
  if n < 2:
    raise ValueError(f'The dataset {input_pipeline.describe(d)} has {n} class(es) '
                     f'{names[:5]}: a classifier needs at least 2.')
  if n != config.model.num_classes:
    raise ValueError(f'The dataset {input_pipeline.describe(d)} has {n} classes but '
                     f'config.model.num_classes={config.model.num_classes}: set '
                     f'--config.model.num_classes={n}.')
  num_train = input_pipeline.num_examples(d, d.train_split)
  if config.batch_size > num_train:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the {num_train} '
                     f'examples of the {d.train_split!r} split.')
  steps_per_epoch, steps = optimizer.run_length(config, num_train)
  if config.schedule == 'cosine' and not (
      0 <= int(config.warmup_epochs * steps_per_epoch) < steps):
    raise ValueError(f'config.warmup_epochs={config.warmup_epochs} gives as many warm-up '
                     f'steps as the run has ({steps}); lower it.')
  input_pipeline.mean(d, d.image_size)  # Raises, saying how to compute it, if missing.
  return num_train
