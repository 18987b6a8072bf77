"""The mesh and the layout: where every array of a run lives.

The mesh has axes ('data', 'model'). With model=2 each device holds one column of every
layer, as the paper's two GPUs did (Section 3.2). The parameters' layout is declared once,
by name (`PARAM_LAYOUT`); the optimizer state's follows the parameters'. A batch is split
over 'data' and replicated over 'model'.
"""

import re

from absl import logging
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np
import optax

AXES = ('data', 'model')


def mesh_shape(mesh_config, columns, num_devices):
  """(data, model, why): the mesh config.mesh asks for over `num_devices` devices.

  mesh_config.model: 2 for the paper's column-per-device split, 1 for none, 0 to choose:
  2 wherever the device count is even and the network has two columns, else 1.
  mesh_config.data: the data-parallel size, -1 for all remaining devices.
  """
  n, model = num_devices, mesh_config.model
  why = f'config.mesh.model={model}'
  if model == 0:
    if columns == 1:
      model, why = 1, 'the one-column network has no columns to split'
    elif n % 2 == 0:
      model, why = 2, 'a column per device, as the paper split its net over two GPUs'
    else:
      model, why = 1, (f'{n} device(s), not a multiple of 2: both columns on every device '
                       '(the paper\'s split needs an even device count)')
  if n % model:
    raise ValueError(f'config.mesh.model={model} does not divide the {n} device(s); use '
                     '--config.mesh.model=0 to choose by device count (or 1).')
  data = n // model if mesh_config.data == -1 else mesh_config.data
  if data < 1 or data * model != n:
    raise ValueError(f'config.mesh.data={mesh_config.data} x model={model} must equal the '
                     f'number of devices ({n}); use --config.mesh.data=-1 to fill.')
  return data, model, why


def create_mesh(mesh_config, devices=None, columns=2):
  """A ('data', 'model') mesh over all devices (of every process); see `mesh_shape`."""
  devices = jax.devices() if devices is None else devices
  data, model, why = mesh_shape(mesh_config, columns, len(devices))
  logging.info('Mesh data=%d x model=%d over %d %s device(s): %s.', data, model,
               len(devices), devices[0].platform, why)
  return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


# The parameters' layout, as rules over their 'layer/name' paths (big_vision's way): the
# first pattern that matches names the mesh axis of the parameter's last dimension. Every
# layer's output channels, kernels and biases alike, are split over 'model': a column per
# device (Section 3.2; fc8's 1000 outputs too, as each GPU computed half of them).
PARAM_LAYOUT = (
    (r'(conv[1-5]|fc[6-8])/(kernel|bias)', 'model'),
)


def param_specs(params):
  """PartitionSpecs for `params` from PARAM_LAYOUT; a parameter no rule names is an error."""
  def spec(path, leaf):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    for pattern, axis in PARAM_LAYOUT:
      if re.fullmatch(pattern, name):
        return P(*(None,) * (np.ndim(leaf) - 1), axis)
    raise ValueError(f'No rule in partitioning.PARAM_LAYOUT places parameter {name} (shape '
                     f'{np.shape(leaf)}) on the mesh; add one for it.')
  return jax.tree_util.tree_map_with_path(spec, params)


def state_specs(state):
  """The train state's layout: the parameters' (param_specs); the optimizer state's parts
  shaped like the parameters (the momentum) alike (optax.tree_map_params); the rest
  (step, counts, hyperparameters, the plateau schedule) replicated."""
  params = param_specs(state.params)
  replicated = lambda _: P()
  opt_state = optax.tree_map_params(state.tx, lambda _, spec: spec, state.opt_state, params,
                                    transform_non_params=replicated,
                                    is_leaf=lambda x: isinstance(x, P))
  return state.replace(step=P(), params=params, opt_state=opt_state,
                       plateau_state=jax.tree.map(replicated, state.plateau_state))


def shardings(mesh, specs):
  """NamedShardings on `mesh` for a tree of PartitionSpecs."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def manual_axes(mesh):
  """The mesh axes the steps are written per device over: those of size > 1.

  An axis of size 1 is left out, so no collective runs over it: XLA:CPU executes such a
  no-op collective as a copy (benchmarks/NOTES.md, item 8).
  """
  return tuple(a for a in AXES if mesh.shape[a] > 1)


def local_model(model, axes):
  """The model as written per device: the shard_map axes it runs under, if any."""
  return model.clone(model_axis='model' if 'model' in axes else None,
                     data_axis='data' if 'data' in axes else None)


def per_device(fn, mesh, axes, in_specs, out_specs):
  """`fn` under shard_map over `axes` (the others, of size 1, stay automatic), or as is."""
  if not axes:
    return fn
  is_spec = lambda x: isinstance(x, P)
  keep = lambda spec: P(*(a if a in axes else None for a in spec))
  in_specs, out_specs = (jax.tree.map(keep, s, is_leaf=is_spec) for s in (in_specs, out_specs))
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       axis_names=set(axes))


def data_shard(mesh):
  """(index, count): this process feeds rows [index*b, (index+1)*b) of each global batch
  of count*b examples, b = global batch / count.

  The process's devices must hold a contiguous block of the 'data' axis; with model=2
  across two processes both feed the same rows (count 1).
  """
  rows = sorted({i for (i, _), d in np.ndenumerate(mesh.devices)
                 if d.process_index == jax.process_index()})
  size = len(rows)
  if rows != list(range(rows[0], rows[0] + size)) or rows[0] % size:
    raise ValueError(f'Process {jax.process_index()} holds data rows {rows} of the mesh, '
                     'not one aligned block; order the devices by process.')
  return rows[0] // size, mesh.shape['data'] // size


def global_batch(mesh, local_batch, abstract=False):
  """Numpy arrays of this process's examples -> global arrays split over 'data' (with
  abstract=True their jax.ShapeDtypeStructs, to compile for); arrays already global
  (synthetic data's) pass as they are."""
  sharding = NamedSharding(mesh, P('data'))
  count = data_shard(mesh)[1]

  def make(x):
    if isinstance(x, jax.Array):
      return x
    shape = (x.shape[0] * count,) + x.shape[1:]
    if abstract:
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return jax.tree.map(make, local_batch)
