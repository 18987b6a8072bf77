"""The steps as an accelerator would receive them: lowered for CUDA and TPU on this CPU host.

`steps.setup(..., abstract=True)` builds the paper's steps (configs/alexnet.py: 224 x 224,
batch 128, 1000 classes) over shapes and shardings only, so nothing is allocated;
`.trace(...).lower(lowering_platforms=...)` lowers them for a platform this machine does
not have. The StableHLO text must hold what the run needs there: the collectives only
where the columns meet (paper Section 3.2: conv3 and fc6-fc8 read both columns) and for
the loss and metrics, no host callbacks, the train state donated, each platform's own
ops for the 'auto' implementations, and the precision config.precision asks for.
"""

import collections
import re

import jax
import pytest

from alexnet_jax import partitioning
from alexnet_jax import pixels
from alexnet_jax import steps
from configs import alexnet

COLLECTIVES = ('all_gather', 'all_reduce', 'reduce_scatter', 'collective_permute',
               'all_to_all', 'collective_broadcast')


def lowered_steps(model_axis, dtype, precision):
  """{'train': traced train step, 'eval': traced 10-view eval step}, config."""
  config = alexnet.get_config('bf16' if dtype == 'bfloat16' else '')
  config.precision = precision
  config.mesh.model, config.mesh.data = model_axis, 1
  # Emulated CPU devices (tests/conftest.py) build the mesh on any host, a GPU's too.
  mesh = partitioning.create_mesh(config.mesh, jax.devices('cpu')[:model_axis])
  _, state, train_step, eval_step = steps.setup(config, mesh, 1000,
                                                pixels.CHANNEL_MEAN, abstract=True)
  b, s = config.batch_size, config.data.image_size
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  batch = {'image': spec((b, s, s, 3), 'uint8'), 'lighting': spec((b, 3), 'float32'),
           'label': spec((b,), 'int32')}
  eval_batch = {'image': spec((b, 10, s, s, 3), 'uint8'), 'label': spec((b,), 'int32'),
                'mask': spec((b,), 'bool')}
  return {'train': train_step.trace(state, batch),
          'eval': eval_step.trace(state.params, eval_batch)}, config, state


def ops(text):
  return collections.Counter(re.findall(r'"?stablehlo\.([a-z_]+)', text))


def collective_shapes(text, name):
  """Sorted operand shapes (without the dtype) of each `name` collective."""
  pattern = rf'"stablehlo\.{name}".*? : \(tensor<([^>]*)>'  # The first operand's type.
  shapes = [re.sub(r'x?[a-z]+[0-9]*$', '', t) for t in re.findall(pattern, text, re.DOTALL)]
  return sorted(shapes)


def argument_attributes(text):
  """The attribute text of each argument of the public main function, in order."""
  signature = re.search(r'func\.func public @main\((.*?)\) -> ', text, re.DOTALL).group(1)
  return re.split(r'%arg\d+: ', signature)[1:]


# Each mesh and dtype once, each precision twice.
CASES = [(1, 'float32', 'highest'), (2, 'float32', 'default'), (1, 'bfloat16', 'default'),
         (2, 'bfloat16', 'highest')]


@pytest.fixture(scope='module', params=CASES, ids=lambda c: f'model{c[0]}-{c[1]}-{c[2]}')
def case(request):
  traced, config, state = lowered_steps(*request.param)
  texts = {(step, platform): traced[step].lower(lowering_platforms=(platform,)).as_text()
           for step in traced for platform in ('cuda', 'tpu')}
  return request.param, config, state, texts


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('step', ['train', 'eval'])
def test_collectives_only_where_the_columns_meet(case, step, platform):
  """model=2: an all-gather of the local column before conv3, fc6, fc7 and fc8 and of
  fc8's half of the logits; in training their transposes (reduce-scatters of the
  gradients back to each column) and three scalar all-reduces (the loss, the top-1 error,
  the finite check); in evaluation a scalar all-reduce for each summed count (the step's
  outputs: top-1, top-5, loss, count, and the centre view's top-1 and top-5). One
  device: no collective at all."""
  (model_axis, _, _), config, _, texts = case
  text = texts[step, platform]
  counts = ops(text)
  if model_axis == 1:
    assert not {c: counts[c] for c in COLLECTIVES if counts[c]}
    return
  b = config.batch_size * (10 if step == 'eval' else 1)  # Ten views a row in eval.
  half = config.model.num_classes // 2
  # pool2 and pool5 of one column (13 x 13 and 6 x 6 x 128), fc6's and fc7's 2048 units,
  # fc8's 500 logits.
  meet = sorted([f'{b}x13x13x128', f'{b}x6x6x128', f'{b}x2048', f'{b}x2048', f'{b}x{half}'])
  assert collective_shapes(text, 'all_gather') == meet
  if step == 'train':
    gathered = sorted([f'{b}x13x13x256', f'{b}x6x6x256', f'{b}x4096', f'{b}x4096',
                       f'{b}x{2 * half}'])
    assert collective_shapes(text, 'reduce_scatter') == gathered
    assert collective_shapes(text, 'all_reduce') == ['', '', '']  # Scalars.
  else:
    assert counts['reduce_scatter'] == 0
    assert collective_shapes(text, 'all_reduce') == [''] * 6
  assert not {c: counts[c] for c in COLLECTIVES[3:] if counts[c]}


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('step', ['train', 'eval'])
def test_no_host_callbacks_and_the_precision_asked_for(case, step, platform):
  """No custom_call at all (a Python callback would be one, pulling the host into every
  step); every convolution and matrix product, forward and backward, carries
  config.precision."""
  (_, _, precision), _, _, texts = case
  text = texts[step, platform]
  counts = ops(text)
  assert counts['custom_call'] == 0 and 'callback' not in text
  want = precision.upper()
  assert counts['convolution'] >= 5 and counts['dot_general'] >= 3
  assert text.count(f'precision_config = [#stablehlo<precision {want}>, '
                    f'#stablehlo<precision {want}>]') == counts['convolution']
  assert text.count(f'precision = [{want}, {want}]') == counts['dot_general']


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_the_train_state_is_donated(case, platform):
  """Each array of the train state is aliased to an output (updated in place); the batch
  is not. The evaluation step donates nothing (the parameters live on)."""
  _, _, state, texts = case
  n = len(jax.tree.leaves(state))
  args = argument_attributes(texts['train', platform])
  assert len(args) == n + 3  # State, then image, label, lighting.
  assert all('tf.aliasing_output' in a for a in args[:n])
  assert not any('tf.aliasing_output' in a or 'jax.buffer_donor' in a for a in args[n:])
  assert 'tf.aliasing_output' not in texts['eval', platform]


def test_auto_implementations_follow_the_platform_lowered_for():
  """'auto' (models.IMPLS) is decided at lowering: lowered for CUDA or TPU the step holds
  XLA's max-pool gradient (select_and_scatter, three pools) and grouped convolutions for
  conv2, conv4 and conv5 (forward and input gradient feature-grouped, kernel gradient
  batch-grouped); the same traced step lowered for the CPU holds our max-pool gradient
  and two convolutions a column."""
  traced, _, _ = lowered_steps(1, 'float32', 'highest')
  for platform in ('cuda', 'tpu', 'cpu'):
    text = traced['train'].lower(lowering_platforms=(platform,)).as_text()
    counts = ops(text)
    if platform == 'cpu':
      assert counts['select_and_scatter'] == 0
      assert 'feature_group_count = 2' not in text and 'batch_group_count = 2' not in text
      # conv1, conv3 once; conv2, conv4, conv5 per column: 8 forward, 15 backward (no
      # input gradient for conv1).
      assert counts['convolution'] == 23
    else:
      assert counts['select_and_scatter'] == 3
      assert text.count('feature_group_count = 2') == 6
      assert text.count('batch_group_count = 2') == 3
      assert counts['convolution'] == 14  # 5 forward, 9 backward.
