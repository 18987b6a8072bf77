"""Caffe's weight files (.caffemodel, .binaryproto) read with the protobuf library.

No Caffe and no protoc: the schema is the few messages of Caffe's caffe.proto
(BVLC/caffe src/caffe/proto/caffe.proto) that hold weights, with Caffe's field numbers,
built here as a descriptor:

  NetParameter      name = 1, layer = 100 (LayerParameter), layers = 2 (V1LayerParameter,
                    the message of files written before 2015)
  LayerParameter    name = 1, type = 2 (string), blobs = 7
  V1LayerParameter  name = 4, type = 5 (enum LayerType, read as its number), blobs = 6
  BlobProto         shape = 7, data = 5 (float), double_data = 8 (double), and before
                    BlobShape num = 1, channels = 2, height = 3, width = 4
  BlobShape         dim = 1 (int64)

Every other field of a file (solver settings, layer parameters) is skipped as unknown.
Repeated numbers are declared packed, as Caffe declares them; protobuf reads packed and
unpacked encodings alike.
"""

import functools

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
import numpy as np

_PACKAGE = 'alexnet_jax.caffe'
_F = descriptor_pb2.FieldDescriptorProto
# (message, [(field, number, type, repeated, message type)]), Caffe's numbers.
_SCHEMA = (
    ('BlobShape', [('dim', 1, _F.TYPE_INT64, True, None)]),
    ('BlobProto', [('num', 1, _F.TYPE_INT64, False, None),
                   ('channels', 2, _F.TYPE_INT64, False, None),
                   ('height', 3, _F.TYPE_INT64, False, None),
                   ('width', 4, _F.TYPE_INT64, False, None),
                   ('data', 5, _F.TYPE_FLOAT, True, None),
                   ('shape', 7, _F.TYPE_MESSAGE, False, 'BlobShape'),
                   ('double_data', 8, _F.TYPE_DOUBLE, True, None)]),
    ('LayerParameter', [('name', 1, _F.TYPE_STRING, False, None),
                        ('type', 2, _F.TYPE_STRING, False, None),
                        ('blobs', 7, _F.TYPE_MESSAGE, True, 'BlobProto')]),
    ('V1LayerParameter', [('name', 4, _F.TYPE_STRING, False, None),
                          ('type', 5, _F.TYPE_INT32, False, None),
                          ('blobs', 6, _F.TYPE_MESSAGE, True, 'BlobProto')]),
    ('NetParameter', [('name', 1, _F.TYPE_STRING, False, None),
                      ('layers', 2, _F.TYPE_MESSAGE, True, 'V1LayerParameter'),
                      ('layer', 100, _F.TYPE_MESSAGE, True, 'LayerParameter')]),
)


@functools.cache
def messages():
  """{name: message class} of the schema, in a descriptor pool of its own."""
  proto = descriptor_pb2.FileDescriptorProto(name='alexnet_jax_caffe.proto',
                                             package=_PACKAGE, syntax='proto2')
  for message, fields in _SCHEMA:
    m = proto.message_type.add(name=message)
    for name, number, kind, repeated, type_name in fields:
      f = m.field.add(name=name, number=number, type=kind,
                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
      if type_name:
        f.type_name = f'.{_PACKAGE}.{type_name}'
      elif repeated:
        f.options.packed = True
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return {message: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f'{_PACKAGE}.{message}')) for message, _ in _SCHEMA}


def blob_array(blob, where='blob'):
  """A BlobProto's values as float32, shaped by its BlobShape or num/channels/height/width."""
  if blob.HasField('shape'):
    shape = tuple(int(d) for d in blob.shape.dim)
  else:
    shape = (blob.num, blob.channels, blob.height, blob.width)
  if len(blob.data):
    values = np.array(blob.data, np.float32)
  else:
    values = np.array(blob.double_data, np.float64).astype(np.float32)
  if values.size != int(np.prod(shape)):
    raise ValueError(f'{where} holds {values.size} numbers but its shape is {shape}.')
  return values.reshape(shape)


def _parse(message, path):
  with open(path, 'rb') as f:
    raw = f.read()
  parsed = messages()[message]()
  parsed.ParseFromString(raw)
  return parsed


def read_caffemodel(path):
  """{layer name: [float32 arrays]} of the layers of a .caffemodel that hold weights.

  Reads both layer messages (`layer` and the older `layers`); arrays keep Caffe's layout,
  e.g. convolution weights [out, in / group, h, w] and biases [out], or the 4-D
  [1, 1, 1, out] and [1, 1, out, in] of files written before BlobShape.
  """
  net = _parse('NetParameter', path)
  weights = {}
  for layer in list(net.layer) + list(net.layers):
    if not layer.blobs:
      continue
    if layer.name in weights:
      raise ValueError(f'{path}: two layers named {layer.name!r} hold weights.')
    weights[layer.name] = [blob_array(b, f'{path}: layer {layer.name!r} blob {i}')
                           for i, b in enumerate(layer.blobs)]
  if not weights:
    raise ValueError(f'{path} holds no layer with weights: not a .caffemodel, or one in '
                     "Caffe's first format (V0LayerParameter), which is not read here.")
  return weights


def read_binaryproto(path):
  """The one BlobProto of a .binaryproto file (e.g. imagenet_mean.binaryproto), float32."""
  return blob_array(_parse('BlobProto', path), path)
