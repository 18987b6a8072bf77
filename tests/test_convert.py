"""Published weights: Caffe's .caffemodel (both layer messages) and the NumPy export, to a
workdir that features, evaluate, predict and training restore.

No real weights are needed: synthetic files with bvlc_alexnet's layer names and shapes and
random values are written here, converted, and the network's logits compared with
tests/caffe_alexnet.py, a PyTorch model written to Caffe's semantics that loads the same
values in Caffe's own layout.
"""

import functools
import json
import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from alexnet_jax import caffe_proto
from alexnet_jax import checkpointing
from alexnet_jax import convert
from alexnet_jax import evaluate
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import partitioning
from alexnet_jax import pixels
from alexnet_jax import predict
from alexnet_jax import steps
from configs import alexnet
from configs import sample
from tests import caffe_alexnet
from tests import runs
from tests.conftest import REPO
from tests.runs import environment

# Caffe's ImageNet mean image is about these channel means (BGR) plus a smooth variation.
MEAN_BGR = np.array([104.0, 116.7, 122.7], np.float32)


def rel_err(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ------------------------------------------------------------ writing Caffe's files --
# Protocol buffers' wire format: a field is a key (number << 3 | wire type) and a value;
# wire type 0 is a varint, 1 eight bytes, 2 a length and bytes, 5 four bytes.

def varint(n):
  out = bytearray()
  while True:
    out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
    n >>= 7
    if not n:
      return bytes(out)


def field(number, wire, payload=b''):
  if wire == 2:
    payload = varint(len(payload)) + payload
  return varint(number << 3 | wire) + payload


def packed(number, values, dtype='<f4'):
  """A packed repeated float (or double) field, as Caffe writes BlobProto.data."""
  return field(number, 2, np.ascontiguousarray(values, dtype).tobytes())


def unpacked_floats(number, values):
  """A repeated float field written element by element (the encoding before [packed])."""
  rows = np.empty(values.size, [('key', 'u1'), ('value', '<f4')])
  rows['key'], rows['value'] = number << 3 | 5, values.reshape(-1)
  assert number << 3 | 5 < 0x80  # A one-byte key.
  return rows.tobytes()


def write_caffemodel(path, blobs):
  """NetParameter with `layer` messages and BlobShape, through the package's schema."""
  m = caffe_proto.messages()
  net = m['NetParameter'](name='AlexNet')
  net.layer.add(name='data', type='Input')
  for name, arrays in blobs.items():
    layer = net.layer.add(name=name,
                          type='Convolution' if name.startswith('conv') else 'InnerProduct')
    for a in arrays:
      blob = layer.blobs.add()
      blob.shape.dim.extend(a.shape)
      blob.MergeFromString(packed(5, a))  # data: bytes in, as fast as Caffe's writer.
    net.layer.add(name=f'relu{name[-1]}', type='ReLU')
  with open(path, 'wb') as f:
    f.write(net.SerializeToString())


def write_caffemodel_v1(path, blobs):
  """The 2014 message: NetParameter.layers (V1LayerParameter), 4-D blobs (num, channels,
  height, width), weights unpacked and conv1's bias as double_data. Encoded here byte by
  byte from caffe.proto's field numbers, independently of the package's schema."""
  v1_type = {'conv': 4, 'fc': 14}  # V1LayerParameter.LayerType CONVOLUTION, INNER_PRODUCT.

  def blob(shape, values, encoding):
    dims = b''.join(field(number, 0, varint(d)) for number, d in zip((1, 2, 3, 4), shape))
    if encoding == 'double':
      return dims + packed(8, values, '<f8')
    return dims + unpacked_floats(5, values)

  layers = [field(2, 2, field(4, 2, b'relu0') + field(5, 0, varint(18)))]  # No blobs.
  for name, (w, b) in blobs.items():
    conv = name.startswith('conv')
    w_shape = w.shape if conv else (1, 1) + w.shape
    layer = (field(4, 2, name.encode()) + field(5, 0, varint(v1_type['conv' if conv else 'fc']))
             + field(6, 2, blob(w_shape, w, 'float'))
             + field(6, 2, blob((1, 1, 1, b.size), b,
                                'double' if name == 'conv1' else 'float')))
    layers.append(field(2, 2, layer))
  with open(path, 'wb') as f:
    f.write(field(1, 2, b'CaffeNet') + b''.join(layers))


def write_binaryproto(path, mean_bgr_chw):
  """imagenet_mean.binaryproto's form: one BlobProto [1, 3, h, w] with num/channels/..."""
  blob = caffe_proto.messages()['BlobProto'](num=1, channels=3, height=mean_bgr_chw.shape[1],
                                             width=mean_bgr_chw.shape[2])
  blob.MergeFromString(packed(5, mean_bgr_chw))
  with open(path, 'wb') as f:
    f.write(blob.SerializeToString())


# ------------------------------------------------------------- the NumPy export --

def write_py2_npy(path, layers):
  """np.save({layer: [W, b]}) as Python 2 and NumPy 1 wrote bvlc_alexnet.npy: a 0-d object
  array pickled with protocol 2, strings as Python 2 str (BINSTRING), arrays through
  numpy.core.multiarray._reconstruct. Pickle opcodes written here by hand."""

  def string(s):
    return (b'U' + bytes([len(s)]) if len(s) < 256 else b'T' + struct.pack('<i', len(s))) + s

  def integer(i):
    return b'J' + struct.pack('<i', i)

  def dtype(code, order, flags):
    return (b'cnumpy\ndtype\n' + string(code) + integer(0) + integer(1) + b'\x87R'
            + b'(' + integer(3) + string(order) + b'NNN' + integer(-1) + integer(-1)
            + integer(flags) + b'tb')

  def array(shape, dtype_pickle, data_pickle):
    return (b'cnumpy.core.multiarray\n_reconstruct\n' + b'cnumpy\nndarray\n' + integer(0)
            + b'\x85' + string(b'b') + b'\x87R' + b'(' + integer(1)
            + b'(' + b''.join(integer(d) for d in shape) + b't' + dtype_pickle + b'\x89'
            + data_pickle + b'tb')

  items = b''.join(
      string(name.encode()) + b']('
      + b''.join(array(a.shape, dtype(b'f4', b'<', 0), string(a.astype('<f4').tobytes()))
                 for a in arrays) + b'e'
      for name, arrays in layers.items())
  obj = array((), dtype(b'O8', b'|', 63), b'](}(' + items + b'ue')
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_1_0(
        f, {'descr': '|O', 'fortran_order': False, 'shape': ()})
    f.write(b'\x80\x02' + obj + b'.')


def to_npy_layout(blobs):
  """The NumPy export's layout from Caffe's: HWIO kernels, [in, out] fc weights, fc6's
  rows in (h, w, c) order (pool5 is 256 x 6 x 6)."""
  layers = {}
  for name, (w, b) in blobs.items():
    if name.startswith('conv'):
      w = w.transpose(2, 3, 1, 0)
    elif name == 'fc6':
      w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
    else:
      w = w.T
    layers[name] = [np.ascontiguousarray(w), b]
  return layers


# --------------------------------------------------------------------- fixtures --

@pytest.fixture(scope='module')
def blobs():
  """bvlc_alexnet's layers with He-scaled random weights and biases, Caffe's layout; fc8
  smaller, so that the softmax outputs are not all 0 or 1."""
  rng = np.random.default_rng(0)
  out = {}
  for name, shape in caffe_alexnet.SHAPES.items():
    std = math.sqrt(2.0 / math.prod(shape[1:])) * (0.1 if name == 'fc8' else 1.0)
    out[name] = [(std * rng.standard_normal(shape, np.float32)).astype(np.float32),
                 (0.1 * rng.standard_normal(shape[0], np.float32)).astype(np.float32)]
  return out


@pytest.fixture(scope='module')
def files(blobs, tmp_path_factory):
  root = tmp_path_factory.mktemp('weights')
  paths = {'caffemodel': root / 'new.caffemodel', 'caffemodel_v1': root / 'v1.caffemodel',
           'npy': root / 'bvlc_alexnet.npy', 'mean': root / 'imagenet_mean.binaryproto'}
  write_caffemodel(paths['caffemodel'], blobs)
  write_caffemodel_v1(paths['caffemodel_v1'], blobs)
  write_py2_npy(paths['npy'], to_npy_layout(blobs))
  write_binaryproto(paths['mean'], mean_image_bgr())
  return paths


def mean_image_bgr():
  """A [3, 256, 256] BGR mean image: the channel means plus ramps down and across."""
  ramp = np.linspace(-8, 8, 256, dtype=np.float32)
  return (MEAN_BGR[:, None, None] + ramp[None, :, None] + 0.5 * ramp[None, None, :])


@pytest.fixture(scope='module')
def caffe_config():
  return alexnet.get_config('caffe')


@pytest.fixture(scope='module')
def images():
  """Two uint8 RGB 227 x 227 images."""
  return np.random.default_rng(1).integers(0, 256, (2, 227, 227, 3), dtype=np.uint8)


def oracle_logits(blobs, images_rgb, mean_bgr):
  """Caffe's computation: BGR, minus the mean (BGR), NCHW, through CaffeAlexNet."""
  x = images_rgb[..., ::-1].astype(np.float32) - mean_bgr
  net = caffe_alexnet.load_blobs(caffe_alexnet.CaffeAlexNet().eval(), blobs)
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


@functools.lru_cache(maxsize=None)
def forward(**model):
  """jitted (params, images uint8 RGB, mean RGB) -> logits, as the tools normalise."""
  net = models.AlexNet(**model)

  @jax.jit
  def apply(params, images, mean):
    x = pixels.normalize(images, None, mean, channel_order='bgr')
    return net.apply({'params': params}, x, train=False)

  return apply


@pytest.fixture(scope='module')
def expected(blobs, images):
  return oracle_logits(blobs, images, MEAN_BGR)


def our_logits(params, config, images, **model):
  return np.asarray(forward(**{**config.model, **model})(
      params, images, np.asarray(config.data.channel_mean, np.float32)))


# ------------------------------------------------------------------------ tests --

def test_synthetic_weights_have_bvlc_alexnets_size(blobs):
  assert sum(w.size + b.size for w, b in blobs.values()) == 60_965_224


@pytest.mark.parametrize('name', ['caffemodel', 'caffemodel_v1'])
def test_both_layer_messages_and_blob_encodings_read_back_exactly(name, files, blobs):
  read = caffe_proto.read_caffemodel(files[name])
  assert sorted(read) == sorted(blobs)  # Layers without weights (data, ReLU) are skipped.
  for layer, (w, b) in blobs.items():
    got_w, got_b = read[layer]
    if name == 'caffemodel':
      assert got_w.shape == w.shape and got_b.shape == b.shape
    else:  # Old 4-D blobs.
      assert got_b.shape == (1, 1, 1, b.size) and got_w.ndim == 4
    np.testing.assert_array_equal(got_w.reshape(w.shape), w)
    np.testing.assert_array_equal(got_b.reshape(-1), b)


@pytest.mark.parametrize('name', ['caffemodel', 'caffemodel_v1', 'npy'])
def test_converted_logits_equal_caffes(name, files, blobs, caffe_config, images, expected):
  if name == 'npy':
    params = convert.from_npy(convert.load_npy(files[name]), caffe_config)
  else:
    params = convert.from_caffe(caffe_proto.read_caffemodel(files[name]), caffe_config)
  got = our_logits(params, caffe_config, images)
  err = rel_err(got, expected)
  print(f'{name}: logits max relative error vs Caffe semantics (PyTorch) {err:.2e}')
  assert err < 1e-5
  assert got.shape == (2, 1000) and np.abs(expected).max() > 1.0


def test_caffes_lrn_across_columns_and_bgr_change_the_logits(blobs, caffe_config, images,
                                                            expected):
  """The inputs are large enough that a per-column LRN, or RGB input, would show."""
  params = convert.from_npy(to_npy_layout(blobs), caffe_config)
  assert rel_err(our_logits(params, caffe_config, images, lrn_across_columns=False),
                 expected) > 1e-3
  assert rel_err(oracle_logits(blobs, images[..., ::-1], MEAN_BGR[::-1]), expected) > 1e-3


def test_npy_written_by_numpy_today_loads_the_same(tmp_path):
  layers = {'conv1': [np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.ones(2, np.float32)]}
  np.save(tmp_path / 'w.npy', layers, allow_pickle=True)
  write_py2_npy(tmp_path / 'py2.npy', layers)
  for path in (tmp_path / 'w.npy', tmp_path / 'py2.npy'):
    got = convert.load_npy(path)
    assert list(got) == ['conv1']
    for a, b in zip(got['conv1'], layers['conv1']):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == np.float32


class RunsCode:
  """What an attacker pickles: unpickling calls os.system(command)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize('form', ['npy', 'pickle'])
def test_a_file_that_would_run_code_is_refused_and_nothing_runs(form, tmp_path):
  marker = tmp_path / 'ran'
  obj = {'conv1': [RunsCode(f'touch {marker}'), np.zeros(3, np.float32)]}
  path = tmp_path / f'evil.{form}'
  if form == 'npy':
    np.save(path, obj, allow_pickle=True)
  else:
    path.write_bytes(pickle.dumps(obj, protocol=2))
  with pytest.raises(pickle.UnpicklingError,
                     match=r'asks to load (posix|os|nt)\.system.*refused.*nothing in it was run'):
    convert.load_npy(path)
  assert not marker.exists()
  # The file is live: an ordinary load runs the command.
  with open(path, 'rb') as f:
    np.load(f, allow_pickle=True) if form == 'npy' else pickle.load(f)
  assert marker.exists()


def test_wrong_architecture_is_a_clear_error(blobs, caffe_config):
  ungrouped = dict(blobs, conv2=[np.zeros((256, 96, 5, 5), np.float32), blobs['conv2'][1]])
  with pytest.raises(ValueError, match=r'conv2 weights has shape \(256, 96, 5, 5\).*'
                                       r'\(256, 48, 5, 5\)'):
    convert.from_caffe(ungrouped, caffe_config)
  with pytest.raises(ValueError, match=r"missing \['fc8'\], unexpected \['fc8_new'\]"):
    convert.from_caffe({**{k: v for k, v in blobs.items() if k != 'fc8'},
                        'fc8_new': blobs['fc8']}, caffe_config)


def test_mean_binaryproto_is_read_as_rgb_hwc(files):
  mean = convert.mean_image(files['mean'])
  assert mean.shape == (256, 256, 3)
  np.testing.assert_array_equal(mean, mean_image_bgr()[::-1].transpose(1, 2, 0))


# ------------------------------------------------------- the workdir and the tools --

@pytest.fixture(scope='module')
def workdir(files, tmp_path_factory):
  """`convert caffe` run as a user would, with the mean image."""
  out = tmp_path_factory.mktemp('converted')
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.convert', 'caffe',
       f'--caffemodel={files["caffemodel"]}', f'--mean={files["mean"]}', f'--out={out}'],
      cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  print(result.stdout)
  assert '60,965,224 parameters, 1000 classes' in result.stdout
  return out


def test_converted_workdir_restores_with_caffes_config(workdir, blobs, caffe_config):
  """inference.load (checkpointing.restore_params: features, evaluate, predict, fine-tuning)."""
  _, params, config = inference.load(workdir)
  want = convert.from_caffe(blobs, caffe_config)
  for layer in want:
    for k in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(params[layer][k]), want[layer][k])
  assert (config.model.lrn_k, config.model.lrn_across_columns, config.model.conv1_padding,
          config.data.image_size, config.data.channel_order, config.data.resize_mode) == (
              1.0, True, 'valid', 227, 'bgr', 'warp')
  assert list(config.data.class_names) == input_pipeline.imagenet_classes()[0]
  # The mean image, stored RGB in the workdir and found from there.
  assert config.data.mean == os.path.join(str(workdir), 'mean_image.npy')
  np.testing.assert_array_equal(input_pipeline.mean(config.data, 227),
                                mean_image_bgr()[::-1, 14:241, 14:241].transpose(1, 2, 0))


@pytest.fixture(scope='module')
def small_workdir(tmp_path_factory):
  """write_workdir on a 10-class run's network (the sample's config at 67 x 67)."""
  out = tmp_path_factory.mktemp('small')
  config = sample.get_config()
  config.data.image_size, config.data.resize_size = 67, 76
  rng = np.random.default_rng(2)
  params = {layer: {k: (math.sqrt(2.0 / math.prod(shape[:-1])) if k == 'kernel' else 0.1)
                       * rng.standard_normal(shape, np.float32)
                    for k, shape in shapes.items()}
            for layer, shapes in convert.param_shapes(config).items()}
  written = convert.write_workdir(params, config, str(out))
  return out, params, written


def test_main_resumes_from_a_written_workdir(small_workdir):
  """The state is the one training builds: main's restore_latest takes it (on model=2)."""
  out, params, config = small_workdir
  mesh = partitioning.create_mesh(config.mesh, jax.devices()[:2])
  assert mesh.shape['model'] == 2
  _, fresh = steps.initial_state(config, mesh)
  manager = checkpointing.create_manager(str(out), config.keep_checkpoints)
  state, evaluated = checkpointing.restore_latest(manager, fresh, config)
  manager.close()
  assert evaluated
  assert int(state.step) == 0 and os.listdir(checkpointing.checkpoint_dir(out)) == ['0']
  for layer in params:
    for k in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(state.params[layer][k]), params[layer][k])


def test_evaluate_cli_writes_json_and_logs_its_progress(small_workdir, tmp_path):
  """Without a terminal (pipes, as in a batch job): progress as lines with images/total and
  the time left, no carriage returns; the first line is its own, none of TensorFlow's
  start-up lines (made to happen: runs.WITH_STARTUP_NOISE)."""
  out, _, _ = small_workdir
  result_file = tmp_path / 'result.json'
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={out}', '--split=validation',
       f'--out={result_file}'],
      cwd=REPO, env=environment(**runs.WITH_STARTUP_NOISE), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result_file.read_text())
  assert json.loads(result.stdout) == got
  assert (got['count'], got['views'], got['workdir']) == (200, 1, str(out))
  assert 0.0 <= got['top5_error'] <= got['top1_error'] <= 1.0 and got['loss'] > 0
  assert '\r' not in result.stderr + result.stdout
  shown = re.findall(r'evaluate: (\d+)/200 images, \d+ min \d\d s left$', result.stderr, re.M)
  assert shown[0] == '64' and shown[-1] == '200', result.stderr  # Batches of 64.
  runs.assert_no_startup_noise(result.stderr)


def test_predict_names_a_runs_own_classes(small_workdir):
  """A 10-class run: its classes come from its data (the sample's WordNet ids)."""
  out, _, config = small_workdir
  folder = os.path.join(sample.SAMPLE_DIR, 'validation', 'n01440764')
  (ranked,) = predict.predict(str(out), [os.path.join(folder, sorted(os.listdir(folder))[0])],
                              top=10)
  readable = dict(zip(*input_pipeline.imagenet_classes()))
  assert sorted(n for _, n, _ in ranked) == input_pipeline.class_names(config.data)
  assert all(r == readable[n] for _, n, r in ranked)
  assert 'tench, Tinca tinca' in [r for _, _, r in ranked]
  assert sum(p for p, _, _ in ranked) == pytest.approx(1.0, abs=1e-5)
  assert [p for p, _, _ in ranked] == sorted((p for p, _, _ in ranked), reverse=True)


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope='module')
def staged(workdir, blobs, tmp_path_factory):
  """Six sample photographs named as ILSVRC-2012 validation images, and the oracle's
  softmax outputs for each ({views: {file name: [1000]}}, 10 views averaged) on the
  evaluation pipeline's crops, minus the mean image's centre as Caffe subtracts it."""
  root = tmp_path_factory.mktemp('staged')
  photos = os.path.join(sample.SAMPLE_DIR, 'validation')
  sources = [os.path.join(photos, wnid, f) for wnid in sorted(os.listdir(photos))[:3]
             for f in sorted(os.listdir(os.path.join(photos, wnid)))[:2]]
  folder = root / 'validation' / 'n01440764'
  folder.mkdir(parents=True)
  for i, src in enumerate(sources, 1):
    shutil.copyfile(src, folder / f'ILSVRC2012_val_{i:08d}.JPEG')
  _, _, config = inference.load(workdir)
  data = inference.data_config(config, str(root))
  mean_bgr = mean_image_bgr()[:, 14:241, 14:241].transpose(1, 2, 0)
  probs = {}
  for views in (1, 10):
    batch = next(input_pipeline.create_split(
        data, 'validation', global_batch_size=8, train=False, image_size=227,
        num_views=views, shard=(0, 1), with_file_names=True))
    keep = batch['mask']
    crops = batch['image'][keep].reshape((-1, 227, 227, 3))
    p = softmax(oracle_logits(blobs, crops, mean_bgr).astype(np.float64))
    p = p.reshape(keep.sum(), views, 1000).mean(1)
    probs[views] = {os.path.basename(n.decode()): row
                    for n, row in zip(batch['file_name'][keep], p)}
  return folder, probs


def val_name(i):
  return f'ILSVRC2012_val_{i:08d}.JPEG'


def test_evaluate_a_folder_holding_only_its_split_with_real(staged, workdir, tmp_path):
  """Each image is filed under a class picked by its rank in the oracle's (1-view)
  ranking, so top-1 and top-5 are right for some images and wrong for others; the ReaL
  lists hold the oracle's top-1 class for some images and not for others."""
  staging, probs = staged
  wnids, _ = input_pipeline.imagenet_classes()
  ranking = {v: {n: [wnids[i] for i in np.argsort(-p, kind='stable')] for n, p in pv.items()}
             for v, pv in probs.items()}
  label_rank = {val_name(i): r for i, r in enumerate([0, 2, 0, 500, 4, 100], 1)}
  label = {n: ranking[1][n][r] for n, r in label_rank.items()}
  root = tmp_path / 'val_only'  # validation/ only: no train split to name the classes.
  for name, wnid in label.items():
    (root / 'validation' / wnid).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(staging / name, root / 'validation' / wnid / name)
  top1 = [wnids.index(ranking[1][val_name(i)][0]) for i in range(1, 7)]
  real = [[top1[0]], [(top1[1] + 1) % 1000], [], [3, top1[3]], [(top1[4] + 1) % 1000],
          [top1[5]]]
  (tmp_path / 'real.json').write_text(json.dumps(real + [[1]] * 50))  # More images.
  real_labels = evaluate.real_labels(tmp_path / 'real.json')
  for views in (1, 10):
    got = evaluate.evaluate(workdir, str(root), 'validation', views, batch_size=4,
                            real=real_labels, progress=False)
    ranks = [ranking[views][n].index(w) for n, w in label.items()]
    real_right = [wnids.index(ranking[views][val_name(i + 1)][0]) in r
                  for i, r in enumerate(real) if r]
    loss = np.mean([-np.log(probs[views][n][wnids.index(w)] + 1e-12)
                    for n, w in label.items()])
    print(f'views={views}: {got}')
    assert (got['count'], got['real_count'], got['views']) == (6, 5, views)
    assert got['top1_error'] == pytest.approx(np.mean([r > 0 for r in ranks]))
    assert got['top5_error'] == pytest.approx(np.mean([r >= 5 for r in ranks]))
    assert got['real_top1_error'] == pytest.approx(1.0 - np.mean(real_right))
    assert got['loss'] == pytest.approx(loss, rel=1e-4)
    if views == 1:  # As constructed.
      assert (got['top1_error'], got['top5_error'], got['real_top1_error']) == \
          pytest.approx((4 / 6, 2 / 6, 2 / 5))


def test_predict_cli_prints_the_top5_by_name(staged, workdir):
  staging, probs = staged
  wnids, names = input_pipeline.imagenet_classes()
  paths = [staging / val_name(i) for i in (1, 2)]
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={workdir}', *map(str, paths)],
      cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  print(result.stdout)
  lines = result.stdout.splitlines()
  assert len(lines) == 12 and lines[0] == str(paths[0]) and lines[6] == str(paths[1])
  for block, path in ((lines[1:6], paths[0]), (lines[7:12], paths[1])):
    p = probs[1][path.name]
    best = np.argsort(-p, kind='stable')[:5]
    for line, i in zip(block, best):
      prob, wnid, readable = re.match(r'  (\d\.\d{4})  (n\d{8})  (.+)$', line).groups()
      assert (wnid, readable) == (wnids[i], names[i])
      assert float(prob) == pytest.approx(p[i], abs=1e-4)


def test_predict_cli_ranks_the_good_images_and_names_each_bad_file(small_workdir, tmp_path):
  """Two photographs among a text file, an empty file and a truncated JPEG: both ranked as
  predict ranks them alone, one ERROR line for each bad file (its path, what is wrong, what
  to do), exit 1; the first line is its own (runs.WITH_STARTUP_NOISE)."""
  out, _, _ = small_workdir
  folder = os.path.join(sample.SAMPLE_DIR, 'validation', 'n01440764')
  good = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:2]]
  (tmp_path / 'notes.txt').write_text('not an image\n')
  (tmp_path / 'empty.JPEG').write_bytes(b'')
  whole = open(good[0], 'rb').read()
  (tmp_path / 'cut.JPEG').write_bytes(whole[:len(whole) // 2])
  bad = {str(tmp_path / 'notes.txt'): 'not an image', str(tmp_path / 'empty.JPEG'): 'empty file',
         str(tmp_path / 'cut.JPEG'): 'a truncated or damaged JPEG'}
  paths = [good[0], *list(bad)[:2], good[1], list(bad)[2]]
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={out}', '--top=3', *paths],
      cwd=REPO, env=environment(**runs.WITH_STARTUP_NOISE), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('ERROR: ')]
  assert len(errors) == 4, result.stderr
  for line, (path, what) in zip(errors, bad.items()):
    assert line.startswith(f'ERROR: {path}: {what}') and '; ' in line, line
  assert errors[3] == 'ERROR: 3 of 5 files could not be used (above); the other 2 are ranked above.'
  runs.assert_no_startup_noise(result.stderr)
  lines = result.stdout.splitlines()
  assert len(lines) == 8 and (lines[0], lines[4]) == tuple(good), result.stdout
  for block, ranked in zip((lines[1:4], lines[5:8]), predict.predict(str(out), good, top=3)):
    for line, (prob, name, readable) in zip(block, ranked):
      shown, rest = line.strip().split('  ', 1)
      assert (float(shown), rest) == (pytest.approx(prob, abs=1e-4), f'{name}  {readable}')


def test_imagenet_class_names_are_in_wordnet_id_order():
  wnids, names = input_pipeline.imagenet_classes()
  assert len(wnids) == len(names) == 1000 and wnids == sorted(set(wnids))
  # Imagenette's classes, named in its README, land on their ImageNet names.
  known = {'n01440764': 'tench', 'n02102040': 'English springer', 'n02979186': 'cassette',
           'n03000684': 'chain saw', 'n03028079': 'church', 'n03394916': 'French horn',
           'n03417042': 'garbage truck', 'n03425413': 'gas pump', 'n03445777': 'golf ball',
           'n03888257': 'parachute'}
  readable = dict(zip(wnids, names))
  assert all(readable[w].startswith(n) for w, n in known.items())
