"""Published AlexNet weights -> a workdir whose checkpoint every tool here restores.

    python -m alexnet_jax.convert caffe --caffemodel=bvlc_alexnet.caffemodel --out=DIR \
        [--mean=imagenet_mean.binaryproto]
    python -m alexnet_jax.convert npy --npy=bvlc_alexnet.npy --out=DIR

`caffe` reads Caffe's bvlc_alexnet (either layer message, caffe_proto.py); `npy` the
widely used NumPy export of the same weights, a pickled dict {layer: [W, b]} with HWIO
kernels and fc6's rows already in (h, w, c) order, read without running anything in the
file (`load_npy`). Both write DIR/checkpoints/0 as training writes a checkpoint: a
TrainState at step 0 (the converted parameters, fresh optimizer state) and the config,
by default configs/alexnet.py's 'caffe' preset, the network and preprocessing Caffe's
weights were trained with. So `features`, `evaluate` and `predict` take --workdir=DIR,
`checkpointing.restore_params(DIR, ...)` gives the parameters for fine-tuning, and
`main --config=configs/alexnet.py:caffe --workdir=DIR` trains on from them.

Caffe's layout -> ours (models.py): convolution weights [out, in / group, h, w] -> HWIO
[h, w, in / group, out] (a group's output channels are a block of the last axis, as our
columns'); fully connected weights [out, in] -> [in, out]; fc6 reads pool5 flattened
(c, h, w) in Caffe and (h, w, c) here, so its rows are permuted. The network reads BGR
(config.data.channel_order), as Caffe's. With --mean, the ILSVRC-2012 mean image (Caffe's
[1, 3, 256, 256] BGR blob) is stored RGB as DIR/mean_image.npy and subtracted instead of
the channel means.
"""

import os
import pickle

from alexnet_jax import console

with console.quiet_imports(__name__ == '__main__'):  # Before TensorFlow's C++ loads.
  from absl import app
  from absl import flags
  import jax
  import jax.numpy as jnp
  import ml_collections
  from ml_collections import config_flags
  import numpy as np

  from alexnet_jax import caffe_proto
  from alexnet_jax import checkpointing
  from alexnet_jax import input_pipeline
  from alexnet_jax import models
  from alexnet_jax import partitioning
  from alexnet_jax import steps

CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
DENSES = ('fc6', 'fc7', 'fc8')
MEAN_FILE = 'mean_image.npy'
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'alexnet.py') + ':caffe'


def param_shapes(config):
  """{layer: {'kernel': shape, 'bias': shape}} of the network `config.model` builds."""
  model = models.AlexNet(**config.model)
  size = config.data.image_size
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0)}, jnp.zeros((1, size, size, 3)), train=False))['params']
  return jax.tree.map(lambda x: tuple(x.shape), shapes)


def _fit(array, shape, what):
  """`array` reshaped to `shape` if they differ only in axes of size 1 (Caffe's old 4-D
  blobs: a bias [1, 1, 1, out], an fc weight [1, 1, out, in]); else a clear error."""
  array = np.asarray(array, np.float32)
  if [d for d in array.shape if d != 1] != [d for d in shape if d != 1]:
    raise ValueError(f'{what} has shape {array.shape}; the two-column AlexNet (Caffe\'s '
                     f'bvlc_alexnet, group: 2 in conv2, conv4, conv5) needs {shape}.')
  return array.reshape(shape)


def _check_layers(found, source):
  missing = [n for n in CONVS + DENSES if n not in found]
  extra = sorted(set(found) - set(CONVS + DENSES))
  if missing or extra:
    raise ValueError(f'{source} is not bvlc_alexnet: layers with weights {sorted(found)}; '
                     f'missing {missing}, unexpected {extra}.')


def from_caffe(blobs, config, source='the caffemodel'):
  """Our parameters (NumPy float32) from {layer: [weights, bias]} in Caffe's layout."""
  _check_layers(blobs, source)
  shapes = param_shapes(config)
  params = {}
  for name in CONVS + DENSES:
    if len(blobs[name]) != 2:
      raise ValueError(f'{source}: layer {name} has {len(blobs[name])} blobs, not 2 '
                       '(weights, bias).')
    kernel_shape = shapes[name]['kernel']
    if name in CONVS:  # HWIO <- [out, in, h, w].
      w = _fit(blobs[name][0], tuple(kernel_shape[i] for i in (3, 2, 0, 1)),
               f'{source}: {name} weights').transpose(2, 3, 1, 0)
    elif name == 'fc6':  # Rows (h, w, c) <- columns (c, h, w).
      channels = shapes['conv5']['kernel'][-1]
      side = int(round((kernel_shape[0] // channels) ** 0.5))
      w = _fit(blobs[name][0], kernel_shape[::-1], f'{source}: fc6 weights')
      w = w.reshape(-1, channels, side, side).transpose(2, 3, 1, 0).reshape(kernel_shape)
    else:
      w = _fit(blobs[name][0], kernel_shape[::-1], f'{source}: {name} weights').T
    params[name] = {'kernel': np.ascontiguousarray(w),
                    'bias': _fit(blobs[name][1], shapes[name]['bias'],
                                 f'{source}: {name} bias')}
  return params


def from_npy(layers, config, source='the .npy file'):
  """Our parameters from the NumPy export {layer: [W, b]}: HWIO kernels, [in, out] fc
  weights with fc6's rows in (h, w, c) order, i.e. already our layout."""
  _check_layers(layers, source)
  shapes = param_shapes(config)
  params = {}
  for name in CONVS + DENSES:
    w, b = layers[name]
    params[name] = {
        'kernel': _fit(w, shapes[name]['kernel'], f'{source}: {name} weights'),
        'bias': _fit(b, shapes[name]['bias'], f'{source}: {name} bias')}
  return params


def num_classes(weights):
  """fc8's output units: the length of its bias."""
  if 'fc8' not in weights or len(weights['fc8']) != 2:
    raise ValueError('No fc8 layer with [weights, bias]: not bvlc_alexnet.')
  return int(np.asarray(weights['fc8'][1]).size)


def mean_image(path):
  """Caffe's mean image (.binaryproto, [1, 3, h, w] BGR) -> float32 [h, w, 3] RGB."""
  blob = caffe_proto.read_binaryproto(path)
  if blob.ndim == 4 and blob.shape[0] == 1:
    blob = blob[0]
  if blob.ndim != 3 or blob.shape[0] != 3:
    raise ValueError(f'{path} holds a blob of shape {blob.shape}; a mean image is '
                     '[1, 3, h, w].')
  return np.ascontiguousarray(blob[::-1].transpose(1, 2, 0))


# --------------------------------------------------------------- the NumPy export --

def _reconstruct():
  """The function NumPy pickles arrays with (numpy.core or numpy._core, by version)."""
  return np.ndarray.__reduce__(np.zeros(0))[0]


class _ArraysOnly(pickle.Unpickler):
  """An unpickler that builds NumPy arrays, dicts, lists and plain values, nothing else.

  A pickle runs code by naming a callable (GLOBAL / STACK_GLOBAL) and calling it (REDUCE);
  every name goes through find_class, which admits only what rebuilds an array.
  """

  def __init__(self, file, path):
    super().__init__(file, encoding='latin1')  # Python 2's str (the 2016 file) as latin-1.
    self._path = path
    self._allowed = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                     ('numpy.core.multiarray', '_reconstruct'): _reconstruct(),
                     ('numpy._core.multiarray', '_reconstruct'): _reconstruct()}

  def find_class(self, module, name):
    if (module, name) not in self._allowed:
      raise pickle.UnpicklingError(
          f'{self._path} asks to load {module}.{name}. A weights file holds only NumPy '
          'arrays in dicts and lists, so it is refused and nothing in it was run; '
          'check where the file came from.')
    return self._allowed[(module, name)]


def load_npy(path):
  """The dict a .npy (np.save of a dict) or pickle file holds, through `_ArraysOnly`."""
  with open(path, 'rb') as f:
    if f.read(6) == b'\x93NUMPY':
      f.seek(0)
      version = np.lib.format.read_magic(f)
      readers = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}
      if version not in readers:
        raise ValueError(f'{path}: .npy format version {version} is not read here.')
      _, _, dtype = readers[version](f)
      if dtype != np.dtype(object):
        raise ValueError(f'{path} holds one {dtype} array, not a dict of layers.')
    else:
      f.seek(0)
    obj = _ArraysOnly(f, path).load()
  if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
    obj = obj.item()
  if not isinstance(obj, dict):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a dict of layers.')
  return obj


# ------------------------------------------------------------------- the workdir --

def write_workdir(params, config, out, mean=None):
  """Writes `params` as checkpoint 0 of workdir `out`, as training writes checkpoints.

  Args:
    params: our layout (from_caffe, from_npy), NumPy or JAX arrays.
    config: the run's config; copied, with model.num_classes from fc8, the ImageNet
      WordNet ids as data.class_names for 1000 classes, and with `mean`, data.mean.
    out: the workdir.
    mean: float32 [h, w, 3] RGB mean image (`mean_image`), or None for channel means.
  Returns:
    The config written.
  """
  config = config.copy_and_resolve_references()
  config.model.num_classes = int(params['fc8']['bias'].shape[0])
  shapes = jax.tree.map(lambda x: tuple(np.shape(x)), params)
  if shapes != param_shapes(config):
    raise ValueError(f'The parameters do not fit the network of config.model: {shapes} vs '
                     f'{param_shapes(config)}.')
  if config.model.num_classes == 1000:
    config.data.class_names = tuple(input_pipeline.imagenet_classes()[0])
  checkpointing.check_writable(out)
  directory = checkpointing.checkpoint_dir(out)
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f'{directory} already holds checkpoints; convert into a new --out.')
  if mean is not None:
    np.save(os.path.join(out, MEAN_FILE), np.asarray(mean, np.float32))
    config.data.mean = MEAN_FILE  # Relative: inference.load reads it from the workdir.
  # One device: a checkpoint restores on any mesh. The learning-rate schedule is not part
  # of the state, so any steps_per_epoch gives the state training builds.
  mesh = partitioning.create_mesh(ml_collections.ConfigDict({'model': 1, 'data': 1}),
                                  jax.devices()[:1])
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  _, state = steps.initial_state(config, mesh, params=params)
  checkpointing.check_space(out, state)
  manager = checkpointing.create_manager(out, config.keep_checkpoints)
  checkpointing.save(manager, 0, state, config)
  checkpointing.finish(manager)
  return config


def count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


FLAGS = flags.FLAGS
COMMANDS = ('caffe', 'npy')


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Give one command: {" or ".join(COMMANDS)} (see --helpfull).')
  config = FLAGS.config
  if argv[1] == 'caffe':
    if not FLAGS.caffemodel:
      raise app.UsageError('convert caffe needs --caffemodel=FILE.')
    source = FLAGS.caffemodel
    weights = caffe_proto.read_caffemodel(source)
  else:
    if not FLAGS.npy:
      raise app.UsageError('convert npy needs --npy=FILE.')
    source = FLAGS.npy
    weights = load_npy(source)
  config.model.num_classes = num_classes(weights)
  convert = from_caffe if argv[1] == 'caffe' else from_npy
  params = convert(weights, config, source)
  mean = mean_image(FLAGS.mean) if FLAGS.mean else None
  written = write_workdir(params, config, FLAGS.out, mean)
  subtracted = (f'the mean image {os.path.join(FLAGS.out, MEAN_FILE)}' if mean is not None
                else f'the channel means {tuple(written.data.channel_mean)} (RGB)')
  print(f'Wrote {checkpointing.checkpoint_dir(FLAGS.out)}/0 from {source}: {count(params):,} '
        f'parameters, {written.model.num_classes} classes; reads {written.data.image_size} x '
        f'{written.data.image_size} {written.data.channel_order.upper()} crops minus '
        f'{subtracted}.\n'
        f'  python -m alexnet_jax.evaluate --workdir={FLAGS.out} --data=imagenet2012\n'
        f'  python -m alexnet_jax.predict --workdir={FLAGS.out} IMAGE.jpg\n'
        f'  python -m alexnet_jax.features --workdir={FLAGS.out} --layer=fc7 --data=FOLDER '
        '--split=SPLIT --out=fc7.npz')


def define_flags():
  """Command-line flags, defined only when this module is the program."""
  config_flags.DEFINE_config_file('config', DEFAULT_CONFIG,
                                  "The run's config (default: the 'caffe' preset).")
  flags.DEFINE_string('caffemodel', '', 'bvlc_alexnet.caffemodel (caffe).')
  flags.DEFINE_string('npy', '', 'bvlc_alexnet.npy (npy).')
  flags.DEFINE_string('mean', '', 'imagenet_mean.binaryproto; default: channel means.')
  flags.DEFINE_string('out', None, 'The workdir to write.')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['out'])
  console.define_flags()
  app.run(console.app_main(main))
