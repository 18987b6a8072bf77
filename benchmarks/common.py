"""What train_step.py and forward.py share: flags, the PyTorch peer, timing and reports.

The two frameworks are timed in the same process on the same device, interleaved: each
repeat times `steps` calls of one, then of the other (alternating which goes first), so
a change in the machine's load during the run touches both alike. Throughput is the
median over repeats; the ratio is alexnet_jax's median over the faster peer's (eager or
torch.compile'd PyTorch).

JAX (and alexnet_jax) is imported inside functions, after the flags are parsed:
--cpu_devices has to set XLA_FLAGS before JAX loads.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

# Model FLOPs per image, two-column net at 224 x 224 (docs/reference.md, "Work per image").
FORWARD_FLOPS = 1.449e9
TRAIN_FLOPS = 4.35e9  # Forward, backward for activations, backward for weights: 3x.

# Dense peak FLOP/s per device by (device-kind substring, arithmetic), from the data
# sheets (SXM parts): 'float32' is float32 at --precision highest (no tensor cores);
# 'tf32' float32 at --precision default, where XLA and the peer use TF32 tensor cores.
# CPUs have no entry: pass --peak_tflops.
PEAK_TFLOPS = {
    ('H200', 'bfloat16'): 989.0, ('H200', 'tf32'): 494.0, ('H200', 'float32'): 67.0,
    ('H100', 'bfloat16'): 989.0, ('H100', 'tf32'): 494.0, ('H100', 'float32'): 67.0,
    ('A100', 'bfloat16'): 312.0, ('A100', 'tf32'): 156.0, ('A100', 'float32'): 19.5,
}


def parser(description):
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--batch', default=None,
                 help='Comma-separated batch sizes (default: 32 on CPU, 32,128,256 on '
                 'GPU).')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help="Compute dtype: alexnet_jax's model.dtype, the peer's autocast.")
  p.add_argument('--precision', default='highest', choices=('highest', 'default'),
                 help="alexnet_jax's config.precision; the peer allows TF32 (cuDNN "
                 "convolutions and matrix products) exactly when 'default'.")
  p.add_argument('--mesh_model', type=int, default=1, choices=(1, 2),
                 help='alexnet_jax mesh model axis: 2 puts one column on each device.')
  p.add_argument('--cpu_devices', type=int, default=0,
                 help='Emulate this many CPU devices (sets XLA_FLAGS before JAX loads); '
                 '--mesh_model 2 on a CPU-only host sets it to 2.')
  p.add_argument('--steps', type=int, default=None, help='Timed steps per repeat.')
  p.add_argument('--warmup', type=int, default=None, help='Untimed steps after compiling.')
  p.add_argument('--repeats', type=int, default=None, help='Timed repeats (median).')
  p.add_argument('--image_size', type=int, default=224,
                 help='Input side; 224 is the paper (FLOP counts and MFU assume it).')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='Peak FLOP/s per device in TFLOP/s for MFU (default: a table by '
                 'device kind; none on CPU).')
  p.add_argument('--peer', default=True, action=argparse.BooleanOptionalAction,
                 help='Time the PyTorch peer too.')
  p.add_argument('--peer_compile', default=None, choices=('off', 'on', 'both'),
                 help="torch.compile the peer: 'both' times eager and compiled peers and "
                 "compares with the faster (default; 'off' with --fast). A peer that fails "
                 'to compile runs eagerly.')
  p.add_argument('--peer_channels_last', default=True,
                 action=argparse.BooleanOptionalAction,
                 help='The peer in channels_last memory format.')
  p.add_argument('--fast', action='store_true',
                 help='A few small steps, to check that the benchmark runs (CI).')
  p.add_argument('--cpu_settings', default=True, action=argparse.BooleanOptionalAction,
                 help="On the CPU, alexnet_jax.cpu_settings (the peer's process too).")
  p.add_argument('--out', default=None, help='Write the results as JSON to this file.')
  p.add_argument('--append', action='store_true',
                 help='Add the rows to --out, replacing rows of the same batch, dtype and '
                 'mesh, instead of overwriting it.')
  return p


def parse(p, argv=None):
  """Parses flags and sets XLA_FLAGS for emulated CPU devices: call before importing JAX."""
  args = p.parse_args(argv)
  if 'jax' in sys.modules and args.cpu_devices:
    raise RuntimeError('--cpu_devices must be parsed before JAX is imported.')
  devices = args.cpu_devices
  if not devices and args.mesh_model > 1 and not _has_accelerator():
    devices = args.mesh_model
  if devices:
    flag = f'--xla_force_host_platform_device_count={devices}'
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + flag).strip()
  return args


def _has_accelerator():
  return os.path.exists('/dev/nvidia0') or os.path.exists('/dev/accel0')


def defaults(args, on_cpu):
  """Fills the flags left unset: fewer and shorter repeats on CPU, tiny ones in --fast."""
  if args.fast:
    batch, steps, warmup, repeats = '2', 1, 1, 2
  elif on_cpu:
    batch, steps, warmup, repeats = '32', 3, 1, 5
  else:
    batch, steps, warmup, repeats = '32,128,256', 20, 5, 5
  args.batch = [int(b) for b in (args.batch or batch).split(',')]
  args.steps = args.steps or steps
  args.warmup = args.warmup if args.warmup is not None else warmup
  args.repeats = args.repeats or repeats
  args.peer_compile = args.peer_compile or ('off' if args.fast else 'both')
  return args


def peak_flops(args, device_kind, dtype, num_devices):
  """Peak FLOP/s of the devices used, or None when unknown (CPUs)."""
  if args.peak_tflops:
    return args.peak_tflops * 1e12 * num_devices
  arithmetic = 'tf32' if dtype == 'float32' and args.precision == 'default' else dtype
  for (kind, dt), tflops in PEAK_TFLOPS.items():
    if kind in device_kind and dt == arithmetic:
      return tflops * 1e12 * num_devices
  return None


def jax_peak_bytes(devices):
  """Largest peak bytes in use over `devices`, where the backend reports it (not CPU)."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def torch_setup(args):
  """(torch, device, autocast context factory) for the peer."""
  import contextlib
  import torch
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  # PyTorch's own defaults differ: TF32 convolutions, float32 matrix products.
  torch.backends.cudnn.allow_tf32 = args.precision == 'default'
  torch.backends.cuda.matmul.allow_tf32 = args.precision == 'default'
  if args.dtype == 'bfloat16':
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
  else:
    autocast = contextlib.nullcontext
  return torch, device, autocast


def torch_peer(args, device):
  """The independent PyTorch AlexNet (tests/torch_alexnet.py), on `device`."""
  import torch
  from tests import torch_alexnet
  model = torch_alexnet.AlexNet()
  if args.image_size != 224:  # fc6 reads pool5, whose side follows the input's.
    side = ((((args.image_size + 3 - 11) // 4 + 1 - 3) // 2 + 1 - 3) // 2 + 1 - 3) // 2 + 1
    model.fc6 = torch.nn.Linear(256 * side * side, 4096)
  model = model.to(device)
  if args.peer_channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def torch_memory_start(torch, device):
  """Resets the peak counter; the bytes already allocated (other peers) on CUDA."""
  if device != 'cuda':
    return None
  torch.cuda.synchronize()
  torch.cuda.reset_peak_memory_stats()
  return torch.cuda.memory_allocated()


def torch_memory_peak(torch, device, start_bytes):
  """Peak bytes this peer added (model, optimizer, activations) since torch_memory_start."""
  if device != 'cuda':
    return None
  torch.cuda.synchronize()
  return torch.cuda.max_memory_allocated() - start_bytes


def peer_input(torch, args, device, batch, rng):
  x = torch.from_numpy(rng.normal(0, 50, (batch, 3, args.image_size, args.image_size))
                       .astype('float32')).to(device)
  if args.peer_channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
  return x


def maybe_compile(torch, fn, compile_it, log):
  """torch.compile(fn) if asked and it works on this machine; else fn. -> (fn, compiled)."""
  if not compile_it:
    return fn, False
  try:
    compiled = torch.compile(fn)
    compiled()  # Compiles now, so a failure shows here and not while timing.
    return compiled, True
  except Exception as e:  # pylint: disable=broad-except
    log(f'torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
        'the peer runs eagerly.')
    return fn, False


def warm_peer(torch, args, device, run, start_bytes, compiled, what):
  """Warms the peer up, checks its `what` is finite; returns (run, wait, peak, settings)."""
  wait = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  for _ in range(1 + args.warmup):
    out = run()
  wait()
  if not torch.isfinite(out).all().item():
    raise FloatingPointError(f'peer: non-finite {what} on the benchmark batch.')
  peak = torch_memory_peak(torch, device, start_bytes)
  settings = {'peer_device': device, 'peer_compiled': compiled,
              'peer_channels_last': args.peer_channels_last,
              'peer_autocast': args.dtype == 'bfloat16',
              'torch_threads': torch.get_num_threads()}
  return run, wait, lambda: peak, settings


def measure(runners, batch, steps, repeats, log):
  """Interleaved timing. runners: {name: (run_one_step, wait_until_done)}.

  Returns ({name: [images/s of each repeat]}, {name: median page faults per step}): a
  page fault is memory the step got fresh from the OS (alexnet_jax/cpu_settings.py).
  """
  rates = {name: [] for name in runners}
  faults = {name: [] for name in runners}
  names = list(runners)
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      run, wait = runners[name]
      wait()
      start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      for _ in range(steps):
        run()
      wait()
      rates[name].append(steps * batch / (time.perf_counter() - start))
      faults[name].append(
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults) / steps)
    log('  repeat %d: %s' % (r, ', '.join(
        f'{n} {rates[n][-1]:.1f} img/s ({faults[n][-1]:.0f} page faults a step)'
        for n in names)))
  return rates, {name: statistics.median(f) for name, f in faults.items()}


def row(args, batch, device, rates, flops_per_image, peak, jax_bytes, peer_bytes, extra):
  """One result row: the required keys plus what is needed to read them.

  The peer is the faster of the timed peers (eager, compiled). `ratio` is the ratio of
  medians; `ratio_paired` the median of each repeat's ratio, which a change of load
  between repeats moves less.
  """
  peers = {name: statistics.median(r) for name, r in rates.items()
           if name.startswith('peer')}
  best = max(peers, key=peers.get) if peers else None
  jax_rate, peer_rate = statistics.median(rates['jax']), peers.get(best)
  mfu = lambda r: None if (r is None or peak is None) else r * flops_per_image / peak
  paired = (statistics.median([j / p for j, p in zip(rates['jax'], rates[best])])
            if best else None)
  return {
      'jax_img_per_s': jax_rate,
      'peer_img_per_s': peer_rate,
      'ratio': None if not peer_rate else jax_rate / peer_rate,
      'ratio_paired': paired,
      'peer': best,
      **{f'{_mode(name)}_img_per_s': r for name, r in peers.items()},
      'device': device,
      'batch': batch,
      'dtype': args.dtype,
      'precision': args.precision,
      'mesh_model': args.mesh_model,
      'image_size': args.image_size,
      'jax_mfu': mfu(jax_rate),
      'peer_mfu': mfu(peer_rate),
      'peak_flops': peak,
      'jax_peak_bytes': jax_bytes,
      'peer_peak_bytes': peer_bytes,
      'steps': args.steps,
      'repeats': args.repeats,
      'jax_repeats': rates['jax'],
      'peer_repeats': rates.get(best),
      **{f'{_mode(n)}_repeats': r for n, r in rates.items() if n.startswith('peer')},
      **extra,
  }


def run(args, name, jax_runner, peer_runner, flops_per_image, extra=None):
  """Times both frameworks at each --batch; prints the table, writes --out; -> rows.

  jax_runner(args, batch, rng) -> (run, wait, devices); peer_runner(args, batch, rng, log,
  compile_it) -> (run, wait, peak_bytes_fn, settings): each compiled and warmed up when
  returned; settings['peer_compiled'] says whether torch.compile worked.
  """
  from alexnet_jax import cpu_settings  # pylint: disable=g-import-not-at-top
  cpu_settings.apply(args.cpu_settings)  # Before JAX starts.
  import jax
  import numpy as np

  on_cpu = jax.default_backend() == 'cpu'
  defaults(args, on_cpu)
  log = lambda msg: print(msg, flush=True)
  if args.mesh_model > jax.device_count():
    sys.exit(f'--mesh_model {args.mesh_model} needs {args.mesh_model} devices; '
             f'{jax.device_count()} found.')
  rows = []
  for batch in args.batch:
    log(f'{name}: batch {batch}, {args.dtype}, precision {args.precision}, mesh '
        f'model={args.mesh_model}')
    rng = np.random.default_rng(0)
    jax_run, jax_wait, devices = jax_runner(args, batch, rng)
    runners = {'jax': (jax_run, jax_wait)}
    settings, peer_peaks = {}, []
    modes = {'off': [False], 'on': [True], 'both': [False, True]}[args.peer_compile]
    for compile_it in modes if args.peer else []:
      peer_run, peer_wait, peak_fn, info = peer_runner(args, batch, rng, log, compile_it)
      peer = 'peer_compiled' if info['peer_compiled'] else 'peer'
      if peer in runners:  # Compiling failed: the eager peer is already there.
        continue
      runners[peer] = (peer_run, peer_wait)
      peer_peaks.append(peak_fn)
      settings.update(info)
    settings['peer_compiled'] = 'peer_compiled' in runners
    load_before = os.getloadavg()[0]
    rates, faults = measure(runners, batch, args.steps, args.repeats, log)
    settings['load_average_1min'] = [load_before, os.getloadavg()[0]]  # Other processes.
    settings['page_faults_per_step'] = faults
    kind = devices[0].device_kind
    device = f'{len(devices)}x {kind}' if len(devices) > 1 else kind
    if on_cpu:
      device += f' ({os.cpu_count()} cores)'
    if args.peer and {'cuda': 'gpu'}.get(settings['peer_device'],
                                          settings['peer_device']) != devices[0].platform:
      log(f"The peer runs on {settings['peer_device']}, alexnet_jax on "
          f'{devices[0].platform}: install a PyTorch build for this device to compare.')
    peer_bytes = [f() for f in peer_peaks]
    peer_bytes = max(peer_bytes) if peer_bytes and None not in peer_bytes else None
    rows.append(row(args, batch, device, rates, flops_per_image,
                    peak_flops(args, kind, args.dtype, len(devices)),
                    jax_peak_bytes(devices), peer_bytes,
                    {'device_count': len(devices), **(extra or {}), **settings}))
    del runners, jax_run, jax_wait  # Frees the donated state before the next batch size.
  report(rows, args, name)
  return rows


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _mode(peer):
  return 'peer_eager' if peer == 'peer' else peer


def report(rows, args, name):
  """Prints the table and writes the JSON file (--out)."""
  head = (f'{"device":28s} {"batch":>5s} {"dtype":>8s} {"model":>5s} {"jax img/s":>10s} '
          f'{"peer img/s":>10s} {"ratio":>6s} {"jax MFU":>8s} {"peer MFU":>8s} '
          f'{"jax peak MB":>11s} {"peer peak MB":>12s}')
  print(f'\n{name}\n{head}')
  fmt = lambda v, f: format('-', '>' + f.split('.')[0]) if v is None else format(v, f)
  mb = lambda v: None if v is None else v / 2**20
  for r in rows:
    print(f'{r["device"][:28]:28s} {r["batch"]:5d} {r["dtype"]:>8s} {r["mesh_model"]:5d} '
          f'{fmt(r["jax_img_per_s"], "10.1f")} {fmt(r["peer_img_per_s"], "10.1f")} '
          f'{fmt(r["ratio"], "6.2f")} {fmt(r["jax_mfu"], "8.1%")} '
          f'{fmt(r["peer_mfu"], "8.1%")} {fmt(mb(r["jax_peak_bytes"]), "11.0f")} '
          f'{fmt(mb(r["peer_peak_bytes"]), "12.0f")}')
  if not args.out:
    return
  import jax
  import torch
  command = ' '.join(['python -m', f'benchmarks.{name}'] + sys.argv[1:])
  when = time.strftime('%Y-%m-%d %H:%M:%S')
  rows = [dict(r, command=command, xla_flags=os.environ.get('XLA_FLAGS', ''), time=when)
          for r in rows]
  key = lambda r: (r['batch'], r['dtype'], r.get('precision'), r['mesh_model'],
                   r['image_size'])
  if args.append and os.path.exists(args.out):
    with open(args.out) as f:
      old = json.load(f)['rows']
    new = {key(r) for r in rows}
    rows = [r for r in old if key(r) not in new] + rows
  meta = {'benchmark': name, 'host': platform.node(), 'cpu_count': os.cpu_count(),
          'processor': _cpu_model(),
          'jax_version': jax.__version__, 'torch_version': torch.__version__}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'meta': meta, 'rows': rows}, f, indent=1)
  print(f'Wrote {args.out}')
