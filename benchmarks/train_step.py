"""Training-step throughput of alexnet_jax against the same network in PyTorch.

    python -m benchmarks.train_step --out benchmarks/results/train_step_cpu.json
    python -m benchmarks.train_step --mesh_model 2        # a column per device
    python -m benchmarks.train_step --dtype bfloat16 --batch 128,256   # on a GPU

alexnet_jax: the real step, `steps.make_train_step` (uint8 images normalised on the
device, forward, backward, the paper's SGD update from `optimizer.create_optimizer`, the
non-finite check) on a `partitioning.create_mesh` mesh, state donated. The peer: the two-column
network of tests/torch_alexnet.py (groups=2, the same LRN), cross entropy, torch.optim.SGD
with momentum 0.9 and weight decay 5e-4 on the weights, in channels_last, under bfloat16
autocast when --dtype bfloat16; eager and torch.compile'd (--peer_compile, default both:
the faster is the one compared). Its input is already a normalised float32 tensor on the
device. Both get random non-zero data.
"""

from benchmarks import common


def jax_runner(args, batch, rng, **model):
  """(run one step, wait, devices used) for alexnet_jax's training step; `model`: fields
  of config.model to set (benchmarks/paths.py)."""
  import jax
  import numpy as np
  from alexnet_jax import partitioning, pixels, steps
  from configs import alexnet

  config = alexnet.get_config('bf16' if args.dtype == 'bfloat16' else '')
  config.batch_size = batch
  config.precision = args.precision
  config.data.image_size = args.image_size
  config.mesh.model, config.mesh.data = args.mesh_model, -1
  config.model.update(model)
  mesh = partitioning.create_mesh(config.mesh)
  _, state, step, _ = steps.setup(config, mesh, 1000, pixels.CHANNEL_MEAN)
  size = args.image_size
  data = partitioning.global_batch(mesh, {
      'image': rng.integers(1, 256, (batch, size, size, 3), dtype=np.uint8),
      'lighting': rng.normal(0, 10, (batch, 3)).astype(np.float32),
      'label': rng.integers(0, config.model.num_classes, batch).astype(np.int32)})
  box = {'state': state, 'metrics': None}

  def run():
    box['state'], box['metrics'] = step(box['state'], data)

  def wait():
    jax.block_until_ready((box['state'], box['metrics']))

  for _ in range(1 + args.warmup):  # The first call compiles.
    run()
  wait()
  if not np.isfinite(float(box['metrics']['loss'])):
    raise FloatingPointError('alexnet_jax: the loss is not finite on the benchmark batch.')
  return run, wait, list(mesh.devices.flat)


def peer_runner(args, batch, rng, log, compile_it):
  """(run one step, wait, peak bytes function, settings) for the PyTorch peer."""
  torch, device, autocast = common.torch_setup(args)
  start_bytes = common.torch_memory_start(torch, device)
  model = common.torch_peer(args, device).train()
  decay = [p for n, p in model.named_parameters() if n.endswith('weight')]
  no_decay = [p for n, p in model.named_parameters() if not n.endswith('weight')]
  opt = torch.optim.SGD([{'params': decay, 'weight_decay': 5e-4},
                         {'params': no_decay, 'weight_decay': 0.0}], lr=0.01, momentum=0.9)
  x = common.peer_input(torch, args, device, batch, rng)
  y = torch.from_numpy(rng.integers(0, 1000, batch)).to(device)

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss

  run, compiled = common.maybe_compile(torch, step, compile_it, log)
  return common.warm_peer(torch, args, device, run, start_bytes, compiled, 'loss')


def main(argv=None):
  args = common.parse(common.parser(__doc__.splitlines()[0]), argv)
  return common.run(args, 'train_step', jax_runner, peer_runner, common.TRAIN_FLOPS)


if __name__ == '__main__':
  main()
