"""Inference (feature extraction) throughput of alexnet_jax against the PyTorch peer.

    python -m benchmarks.forward --out benchmarks/results/forward_cpu.json
    python -m benchmarks.forward --mesh_model 2      # the model-parallel evaluation step

alexnet_jax, --mesh_model 1: `inference.make_features_fn` (uint8 images normalised on the
device, the forward pass in eval mode, the --layer activations returned), on one device.
--mesh_model 2: the model-parallel forward of `steps.make_eval_step` (logits, softmax and
top-1/top-5 counts) with a column on each device. The peer: tests/torch_alexnet.py's
`features(x)[layer]` in eval mode under torch.inference_mode, channels_last, bfloat16
autocast with --dtype bfloat16; eager and torch.compile'd (--peer_compile, default both:
the faster is the one compared).
"""

from benchmarks import common


def jax_runner(args, batch, rng):
  """(run one batch, wait, devices used) for alexnet_jax's forward pass."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from alexnet_jax import inference, models, partitioning, pixels, steps
  from configs import alexnet

  config = alexnet.get_config('bf16' if args.dtype == 'bfloat16' else '')
  config.data.image_size = size = args.image_size
  config.precision = args.precision
  model = models.AlexNet(**config.model)
  images = rng.integers(1, 256, (batch, size, size, 3), dtype=np.uint8)
  mean = jnp.asarray(pixels.CHANNEL_MEAN)
  if args.mesh_model == 1:
    device = jax.devices()[0]
    init = lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((1, size, size, 3)),
                              train=False)['params']
    params = jax.jit(init, out_shardings=jax.sharding.SingleDeviceSharding(device))()
    fn = steps.with_precision(inference.make_features_fn(model, [args.layer], mean),
                              args.precision)
    data = jax.device_put(images, device)
    call, devices = (lambda: fn(params, data)), [device]
  else:
    config.mesh.model, config.mesh.data = args.mesh_model, -1
    mesh = partitioning.create_mesh(config.mesh)
    _, state, _, fn = steps.setup(config, mesh, 1000, mean)
    params = state.params
    data = partitioning.global_batch(mesh, {
        'image': images, 'label': rng.integers(0, 1000, batch).astype(np.int32),
        'mask': np.ones(batch, bool)})
    call, devices = (lambda: fn(params, data)), list(mesh.devices.flat)
  box = {}

  def run():
    box['out'] = call()

  def wait():
    jax.block_until_ready(box.get('out'))

  for _ in range(1 + args.warmup):
    run()
  wait()
  if not all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(box['out'])):
    raise FloatingPointError('alexnet_jax: non-finite outputs on the benchmark batch.')
  return run, wait, devices


def peer_runner(args, batch, rng, log, compile_it):
  """(run one batch, wait, peak-memory function, settings) for the PyTorch peer."""
  torch, device, autocast = common.torch_setup(args)
  start_bytes = common.torch_memory_start(torch, device)
  model = common.torch_peer(args, device).eval()
  x = common.peer_input(torch, args, device, batch, rng)
  layer = args.layer if args.mesh_model == 1 else 'logits'

  def forward():
    with torch.inference_mode(), autocast():
      return model.features(x)[layer]

  run, compiled = common.maybe_compile(torch, forward, compile_it, log)
  return common.warm_peer(torch, args, device, run, start_bytes, compiled, 'outputs')


def main(argv=None):
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument('--layer', default='fc7', help='Layer to extract (--mesh_model 1).')
  args = common.parse(p, argv)
  if args.mesh_model == 1:
    extra = {'jax_fn': 'inference.make_features_fn', 'layer': args.layer}
  else:
    extra = {'jax_fn': 'steps.make_eval_step', 'layer': 'logits'}
  return common.run(args, 'forward', jax_runner, peer_runner, common.FORWARD_FLOPS, extra)


if __name__ == '__main__':
  main()
