r"""senet_jax vs timm: training-step and inference throughput, side by side in one process.

    python benchmarks/train_step.py                                  # CPU defaults
    python benchmarks/train_step.py --models=efficientnet_b0 --shapes=224x16 --repeats=7
    python benchmarks/train_step.py --torch_compile --json=bench.json  # GPU: bf16 + channels_last

For every (model, resolution x batch) it builds the same network in both frameworks (timm's
matching layout, see TIMM_NAMES), compiles / warms up, then times single steps alternating JAX
and PyTorch so machine noise hits both, and reports the median images/s per step, the ratio
senet_jax / timm, the JAX compile time, the CPU time the hypervisor stole from this machine
while timing (Linux; noise that neither framework causes) and peak device memory (GPU). A
training step is forward + backward + SGD-momentum update + BatchNorm statistics in both.

The median is over single steps rather than over rounds of several: the first steps of a
process under mimalloc sometimes take 3-5x longer (the allocator maps and first-touches a new
region for XLA's step buffer, measured 886 huge-page faults and 6 s of system time in one
EfficientNet-B0 step at 224 px), and a round that contains one such step would count it.

`--rounds=N` measures the other way round (issue 37's method): each framework in its own fresh
process, N rounds alternating senet_jax and timm processes, the median over the single steps of
all rounds. Nothing is shared then (one allocator heap per framework, no cache or thread-pool
interference), but machine noise hits the two at different times: read it with the steal
column and the per-round medians the JSON keeps.

    python benchmarks/train_step.py --mode=train --shapes=224x16 --rounds=3
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import roofline  # noqa: E402  (beside this file)

# senet_jax name -> (timm name, senet_jax overrides) with the same architecture and layout.
TIMM_NAMES = {
    'efficientnet_b0': ('tf_efficientnet_b0', {}),
    'efficientnet_b0_sym': ('efficientnet_b0', {'padding': 'symmetric', 'bn_epsilon': 1e-5}),
    'se_resnet50': ('legacy_seresnet50', {}),
    'se_resnet50_v15': ('seresnet50', {'layout': 'v1.5'}),
    'resnet50': ('resnet50', {'layout': 'v1.5'}),
    'se_resnext50_32x4d': ('legacy_seresnext50_32x4d', {}),
    'senet154': ('legacy_senet154', {}),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='efficientnet_b0,se_resnet50,se_resnext50_32x4d')
  p.add_argument('--shapes', default='224x16,64x64', help='RESOLUTIONxBATCH, comma separated')
  p.add_argument('--steps', type=int, default=9, help='timed steps per framework (median)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps per framework first')
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--mode', default='train,infer')
  p.add_argument('--torch_compile', action='store_true', help='also time torch.compile')
  p.add_argument('--no_torch', action='store_true', help='senet_jax only')
  p.add_argument('--torch_only', action='store_true', help='timm only')
  p.add_argument('--rounds', type=int, default=0,
                 help='N > 0: each framework in its own processes, N rounds alternating them')
  p.add_argument('--conv_impl', default='auto')
  p.add_argument('--dtype', default='auto', help="'auto': bfloat16 on GPU, float32 on CPU")
  p.add_argument('--json', default='', help='write the results here')
  p.add_argument('--in_process', action='store_true',
                 help='run every case in this process (default: a fresh process per case, so '
                      'one model\'s retained memory cannot slow or starve the next)')
  args = p.parse_args(argv)
  unknown = [m for m in args.models.split(',') if m not in TIMM_NAMES]
  if unknown:  # before any process starts: one line naming the flag and what it accepts
    p.error(f'--models: {",".join(unknown)} has no timm counterpart here; expected names from '
            f'{", ".join(TIMM_NAMES)}')
  return args


def run_isolated(args, name, shape, mode, framework=''):
  """Runs one (model, shape, mode) case in a fresh interpreter; returns its row.

  `framework`: '--no_torch' or '--torch_only' to time one framework only."""
  import subprocess
  import tempfile
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    cmd = [sys.executable, os.path.abspath(__file__), '--in_process', f'--models={name}',
           f'--shapes={shape}', f'--mode={mode}', f'--steps={args.steps}',
           f'--warmup={args.warmup}', f'--threads={args.threads}',
           f'--conv_impl={args.conv_impl}', f'--dtype={args.dtype}', f'--json={out.name}']
    cmd += ['--torch_compile'] * args.torch_compile + ['--no_torch'] * args.no_torch
    cmd += [framework] * bool(framework)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out.name) as f:
      return json.load(f)['rows'][0]


def run_separate(args, name, shape, mode):
  """`args.rounds` rounds of one senet_jax process then one timm process; returns the row.

  Step times are pooled over the rounds (median of all single steps, as in one process); the
  compile time is the median over the senet_jax processes."""
  jax_rows, torch_rows = [], []
  for _ in range(args.rounds):
    jax_rows.append(run_isolated(args, name, shape, mode, framework='--no_torch'))
    torch_rows.append(run_isolated(args, name, shape, mode, framework='--torch_only'))
  row = dict(jax_rows[0])
  row['rounds'] = args.rounds
  for key, rows in (('senet_jax', jax_rows), ('timm', torch_rows)):
    steps = [t for r in rows for t in r[f'{key}_step_s']]
    row[f'{key}_step_s'] = steps
    row[f'{key}_img_s'] = row['batch'] / statistics.median(steps)
    row[f'{key}_round_img_s'] = [r[f'{key}_img_s'] for r in rows]
  row['jax_compile_s'] = statistics.median(r['jax_compile_s'] for r in jax_rows)
  steals = [r['cpu_steal'] for r in jax_rows + torch_rows if r.get('cpu_steal') is not None]
  row['cpu_steal'] = max(steals) if steals else None
  row['ratio_vs_timm'] = row['senet_jax_img_s'] / row['timm_img_s']
  return row


def _time_step(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def cpu_steal_ticks() -> int | None:
  """Machine-wide CPU time stolen by the hypervisor so far (/proc/stat ticks), or None."""
  try:
    with open('/proc/stat') as f:
      fields = f.readline().split()
    return int(fields[8])
  except (OSError, IndexError, ValueError):
    return None


def steal_fraction(ticks_before, ticks_after, seconds: float, hz: int | None = None,
                   cpus: int | None = None) -> float | None:
  """Fraction of the machine's CPU time stolen between two `cpu_steal_ticks()` readings
  `seconds` apart (`hz`: ticks per second, `cpus`: the machine's CPUs; this machine's when None)."""
  if ticks_before is None or ticks_after is None or seconds <= 0:
    return None
  hz = hz or os.sysconf('SC_CLK_TCK')
  cpus = cpus or os.cpu_count()
  return (ticks_after - ticks_before) / hz / (seconds * cpus)


def sgd_training_step(model):
  """(step, optimizer): the training step every benchmark times or inspects (forward,
  backward, BatchNorm statistics, SGD with momentum), for
  step(params, batch_stats, opt_state, images, labels, dropout_key) ->
  (params, batch_stats, opt_state, loss); jit it with donate_argnums=(0, 1, 2)."""
  import jax
  import jax.numpy as jnp
  import optax
  opt = optax.sgd(0.01, momentum=0.9)

  def step(params, stats, opt_state, x, y, key):
    def loss_fn(p):
      logits, upd = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'], rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), y).mean(), upd['batch_stats']
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss
  return step, opt


def jax_runner(name, overrides, res, batch, train, dtype, conv_impl):
  """Returns (step_fn, compile_seconds, XLA cost estimate) for senet_jax."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from senet_jax.models import create_model
  model_name = name.replace('_sym', '').replace('_v15', '')
  model = create_model(model_name, dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32,
                       conv_impl=conv_impl, **overrides)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(batch, res, res, 3).astype(np.float32))
  y = jnp.asarray(rng.randint(0, 1000, batch))
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  if train:
    step, opt = sgd_training_step(model)
    args = [variables['params'], variables['batch_stats'], opt.init(variables['params']), x, y,
            jax.random.key(1)]
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    state = {'args': args}

    def run():
      p, s, o, loss = compiled(*state['args'])
      state['args'] = [p, s, o, x, y, state['args'][5]]
      loss.block_until_ready()
  else:
    fwd = lambda v, x: model.apply(v, x, train=False)
    t0 = time.perf_counter()
    compiled = jax.jit(fwd).lower(variables, x).compile()
    compile_s = time.perf_counter() - t0

    def run():
      compiled(variables, x).block_until_ready()
  return run, compile_s, roofline.step_cost(model, res, batch, train, compiled)


def torch_runner(timm_name, res, batch, train, on_gpu, compile_model):
  """Returns a step function for timm (eager, or torch.compile)."""
  import timm
  import torch
  device = 'cuda' if on_gpu else 'cpu'
  model = timm.create_model(timm_name, pretrained=False).to(device)
  x = torch.randn(batch, 3, res, res, device=device)
  y = torch.randint(0, 1000, (batch,), device=device)
  if on_gpu:
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
  if compile_model:
    model = torch.compile(model)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=on_gpu)
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  if train:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(x), y)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sync()
  else:
    model.eval()

    def run():
      with torch.no_grad(), autocast:
        model(x)
      sync()
  return run


def peak_memory_gb(on_gpu):
  """(jax, torch) peak device memory in GB on GPU; None on CPU."""
  if not on_gpu:
    return None, None
  import jax
  import torch
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use', 0) / 1e9, torch.cuda.max_memory_allocated() / 1e9


def bench_one(args, name, res, batch, train, on_gpu, dtype):
  timm_name, overrides = TIMM_NAMES[name]
  runners, compile_s, cost = {}, float('nan'), {'gflop': None, 'gbytes': None}
  if not args.torch_only:
    run_jax, compile_s, cost = jax_runner(name, overrides, res, batch, train, dtype,
                                          args.conv_impl)
    runners['senet_jax'] = run_jax
  if not args.no_torch:
    runners['timm'] = torch_runner(timm_name, res, batch, train, on_gpu, False)
    if args.torch_compile:
      try:
        runners['timm_compile'] = torch_runner(timm_name, res, batch, train, on_gpu, True)
      except Exception as err:  # noqa: BLE001 - report and go on
        print(f'  torch.compile unavailable for {timm_name}: {err}', file=sys.stderr)
  for fn in runners.values():  # warm-up (compiles torch.compile, autotunes cuDNN)
    for _ in range(args.warmup):
      fn()
  times = {k: [] for k in runners}
  steal_before, start = cpu_steal_ticks(), time.perf_counter()
  for _ in range(args.steps):
    for k, fn in runners.items():
      times[k].append(_time_step(fn))
  steal = steal_fraction(steal_before, cpu_steal_ticks(), time.perf_counter() - start)
  ips = {k: batch / statistics.median(v) for k, v in times.items()}
  row = {'model': name, 'timm_model': timm_name, 'mode': 'train' if train else 'infer',
         'resolution': res, 'batch': batch, 'dtype': dtype, 'jax_compile_s': compile_s,
         'jax_gflop': cost['gflop'], 'jax_gbytes': cost['gbytes'],
         'cpu_steal': steal, **{f'{k}_img_s': v for k, v in ips.items()},
         **{f'{k}_step_s': v for k, v in times.items()}}
  for k in runners:
    if k != 'senet_jax' and 'senet_jax' in ips:
      row[f'ratio_vs_{k}'] = ips['senet_jax'] / ips[k]
  row['jax_peak_gb'], row['torch_peak_gb'] = peak_memory_gb(on_gpu)
  return row


def main(argv=None):
  args = parse_args(argv)
  from senet_jax.utils import allocator, xla_flags
  allocator.reexec_with_jemalloc()  # both frameworks then run on jemalloc, as main.py does
  xla_flags.configure_xla_cpu()  # and XLA with the CPU convolution flags main.py sets
  # Both frameworks share the GPU: JAX must not take 75% of it up front.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  on_gpu = jax.default_backend() == 'gpu'
  if not args.in_process:
    print(environment(args.threads), flush=True)
  ceilings = None
  if not args.in_process:  # the CPU steps in float32: its peak is a float32 product's
    ceilings = (roofline.measure_ceilings() if on_gpu else
                roofline.measure_ceilings(matmul_n=2048, copy_gb=0.5, dtype='float32'))
    print(f"measured ceilings: {ceilings['peak_dtype']} matmul "
          f"{ceilings['peak_tflops']:.3g} TFLOP/s, memory {ceilings['peak_tb_s']:.3g} TB/s "
          '(read + write)', flush=True)
  dtype = args.dtype if args.dtype != 'auto' else ('bfloat16' if on_gpu else 'float32')
  if not args.no_torch:
    import torch
    torch.set_num_threads(args.threads)
  rows = []
  for name in args.models.split(','):
    for shape in args.shapes.split(','):
      res, batch = (int(v) for v in shape.split('x'))
      for mode in args.mode.split(','):
        if args.in_process:
          row = bench_one(args, name, res, batch, mode == 'train', on_gpu, dtype)
          jax.clear_caches()
          gc.collect()  # free both frameworks' buffers before the next model
        elif args.rounds:
          row = run_separate(args, name, shape, mode)
        else:
          row = run_isolated(args, name, shape, mode)
        if ceilings:
          row.update(roofline.achieved(row, ceilings))
        rows.append(row)
        print(format_row(row), flush=True)
  print('\n' + markdown_table(rows))
  print(f'\n{environment(args.threads)}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'rows': rows, 'device': jax.devices()[0].device_kind}, f, indent=1)


def allocator_name(environ=None) -> str:
  """The allocator both frameworks run on, as main.py's re-exec leaves it."""
  environ = os.environ if environ is None else environ
  preload = environ.get('LD_PRELOAD', '')
  if 'jemalloc' in preload:
    return f"jemalloc ({preload.split()[0]}, MALLOC_CONF={environ.get('MALLOC_CONF', '')})"
  if 'mimalloc' in preload:
    return f'mimalloc ({preload.split()[0]})'
  tunables = environ.get('GLIBC_TUNABLES')
  return 'glibc malloc' + (f' (GLIBC_TUNABLES={tunables})' if tunables else
                           ' (jemalloc not installed)')


def environment(threads: int) -> str:
  """One line: what the numbers were measured with (README "Speed" quotes it)."""
  import jax
  import jaxlib
  versions = f'jax {jax.__version__} / jaxlib {jaxlib.__version__}'
  try:
    import timm
    import torch
    versions += f' / torch {torch.__version__} / timm {timm.__version__}'
  except ImportError:
    pass
  return (f'environment: {jax.devices()[0].device_kind} ({jax.default_backend()}), '
          f'{os.cpu_count()} cores; torch threads {threads}, XLA threads: all cores (default); '
          f'allocator {allocator_name()}; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; '
          f'{versions}')


def format_row(row):
  extra = ' '.join(f'{k}={v:.2f}' for k, v in row.items() if k.startswith(('ratio', 'frac')))
  if row.get('cpu_steal') is not None:
    extra += f" steal={row['cpu_steal']:.0%}"
  jax_img_s = row.get('senet_jax_img_s', float('nan'))  # absent in a --torch_only child
  return (f"{row['model']:>22} {row['mode']:5} {row['resolution']}x{row['batch']:<3} "
          f"senet_jax {jax_img_s:8.1f} img/s  timm {row.get('timm_img_s', 0):8.1f}"
          f"  {extra}  compile {row['jax_compile_s']:.1f}s")


def markdown_table(rows):
  """The README table; torch.compile and roofline columns appear when some row has them."""
  compiled = any('ratio_vs_timm_compile' in r for r in rows)
  roof = any('frac_hbm' in r for r in rows)
  head = ['model', 'mode', 'res x batch', 'senet_jax img/s', 'timm img/s', 'ratio']
  head += ['timm+compile img/s', 'ratio'] * compiled
  head += ['TFLOP/s (of peak)', 'TB/s (of peak)'] * roof + ['compile (s)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  nan = float('nan')
  for r in rows:
    cells = [f"{r['model']} ({r['timm_model']})", r['mode'], f"{r['resolution']}x{r['batch']}",
             f"{r.get('senet_jax_img_s', nan):.1f}", f"{r.get('timm_img_s', 0):.1f}",
             f"{r.get('ratio_vs_timm', nan):.2f}"]
    if compiled:
      cells += [f"{r.get('timm_compile_img_s', nan):.1f}", f"{r.get('ratio_vs_timm_compile', nan):.2f}"]
    if roof:
      cells += [f"{r['jax_tflops']:.3g} ({r['frac_peak_flops']:.1%})",
                f"{r['jax_tb_s']:.2f} ({r['frac_hbm']:.0%})"]
    lines.append('| ' + ' | '.join(cells + [f"{r['jax_compile_s']:.1f}"]) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
