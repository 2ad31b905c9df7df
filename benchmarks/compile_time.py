r"""Cold compile time of the training step, split into tracing, lowering and XLA compile.

    python benchmarks/compile_time.py                          # efficientnet_b0, se_resnext50_32x4d
    python benchmarks/compile_time.py --variants=base,fast_compile --steps=3 --rounds=3
    python benchmarks/compile_time.py --cache_runs=3           # the persistent cache: N runs
    python benchmarks/compile_time.py --passes --models=efficientnet_b0  # slowest XLA passes

The step is `benchmarks/train_step.py`'s (`jax_runner`: the step `make bench` times, whose
compile time the README reports), 224 px, batch 16, float32, under the same allocator and XLA
flags as `make bench`. JAX reports how long each phase took through `jax.monitoring`
(`jaxpr_trace_duration`, `jaxpr_to_mlir_module_duration`, `backend_compile_duration`): this
script listens to those events instead of re-implementing the step, so tracing (Python: flax
and autodiff), lowering (jaxpr -> StableHLO) and XLA's compile (HLO passes + LLVM codegen) are
the phases of exactly the step the benchmark compiles.

Every (model, variant) runs in a fresh process with no persistent cache (cold), variants
alternate within each round so machine load hits all of them, and the table shows the median
over `--rounds` with the ratio to the first variant. A variant is a set of extra XLA flags
(VARIANTS); `--steps=K` also times K single training steps after 2 warm-ups (median), because a
flag that compiles faster but runs slower is no win for training.

`--cache_runs=N` runs N processes with the same shapes and one fresh
`jax_compilation_cache_dir` (what `config.compilation_cache_dir` sets in the trainer): the
first compiles and writes the cache, the others read it. `--passes` runs one process with XLA's
per-pass timers logged (TF_CPP_VMODULE) and prints the slowest passes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# Extra XLA_FLAGS per variant, on top of the project's own (senet_jax/utils/xla_flags.py).
VARIANTS = {
    'base': '',
    'fast_compile': '--xla_cpu_opt_preset=FAST_COMPILE',
    'opt1': '--xla_backend_optimization_level=1',
    'opt0': '--xla_backend_optimization_level=0',
    'no_expensive_llvm': '--xla_llvm_disable_expensive_passes=true',
    'split8': '--xla_cpu_parallel_codegen_split_count=8',
    'split2': '--xla_cpu_parallel_codegen_split_count=2',
    'legacy_emitters': '--xla_cpu_use_fusion_emitters=false',
    'avx2': '--xla_cpu_max_isa=AVX2',
    'vector128': '--xla_cpu_prefer_vector_width=128',
    'concurrency_scheduler': '--xla_cpu_enable_concurrency_optimized_scheduler=true',
}
EVENTS = {'trace': '/jax/core/compile/jaxpr_trace_duration',
          'lower': '/jax/core/compile/jaxpr_to_mlir_module_duration',
          'xla': '/jax/core/compile/backend_compile_duration'}
# XLA_SCOPED_LOGGING_TIMER lines ("<label> time: 16 ms (16046 us) ...") of the HLO pass pipeline
# and the CPU compiler: VLOG(1) of the files that hold the timers.
PASS_VMODULE = 'hlo_pass_pipeline=1,cpu_compiler=1'
_TIMER = re.compile(r'\] (.+?) time: .*?\((\d+) us\)')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='efficientnet_b0,se_resnext50_32x4d')
  p.add_argument('--shape', default='224x16', help='RESOLUTIONxBATCH')
  p.add_argument('--variants', default='base', help=f'comma separated, from {sorted(VARIANTS)}')
  p.add_argument('--rounds', type=int, default=3, help='fresh processes per (model, variant)')
  p.add_argument('--steps', type=int, default=0, help='timed training steps per process')
  p.add_argument('--cache_runs', type=int, default=0,
                 help='instead: N processes sharing one persistent compilation cache')
  p.add_argument('--passes', action='store_true', help='instead: log and rank XLA pass times')
  p.add_argument('--json', default='', help='write every measurement here')
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)  # model name, in a child
  p.add_argument('--cache_dir', default='', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def worker(args) -> None:
  """One cold compile (+ optional steps) in this process; prints one JSON line."""
  from senet_jax.utils import allocator, xla_flags
  allocator.reexec_with_jemalloc()  # as make bench: same allocator, same XLA flags
  xla_flags.configure_xla_cpu()
  import jax
  import train_step
  if args.cache_dir:
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
    # Cache every compile: the defaults skip compiles under 1 s and small entries.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  seconds, cpu_at = {}, {}

  def listen(event, secs, **_):  # the last event of each kind is the step's (compiled last)
    seconds[event], cpu_at[event] = secs, time.process_time()
  jax.monitoring.register_event_duration_secs_listener(listen)
  train_step.roofline.step_cost = lambda *a: {}  # its cost analysis is not part of compiling
  res, batch = (int(v) for v in args.shape.split('x'))
  t0 = time.process_time()
  run, total, _ = train_step.jax_runner(args.worker, {}, res, batch, True, 'float32', 'auto')
  row = {k: seconds.get(e, float('nan')) for k, e in EVENTS.items()}
  # CPU seconds of XLA's compile (all threads): less sensitive to other processes' load than
  # wall time on this shared machine. The compile follows the lowering event directly.
  row.update(total=total, cpu_all=time.process_time() - t0,
             cpu_xla=cpu_at.get(EVENTS['xla'], 0) - cpu_at.get(EVENTS['lower'], 0),
             xla_flags=os.environ.get('XLA_FLAGS'))
  times = []
  for i in range(args.steps + 2 * (args.steps > 0)):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  if args.steps:
    row['step'] = statistics.median(times[2:])
  print('RESULT ' + json.dumps(row), flush=True)


def spawn(model, shape, flags, steps=0, cache_dir='', env_extra=None):
  """Runs `worker` in a fresh process with `flags` added to XLA_FLAGS; returns (row, log)."""
  env = dict(os.environ, **(env_extra or {}))
  env['XLA_FLAGS'] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # cold unless cache_dir is given
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={model}', f'--shape={shape}',
         f'--steps={steps}', f'--cache_dir={cache_dir}']
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    raise RuntimeError(f'{model} with {flags!r} failed:\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len('RESULT '):]), proc.stderr


def load_average() -> str:
  """The 1-minute load average (the machine is shared: read the figures with it)."""
  return f'{os.getloadavg()[0]:.1f}' if hasattr(os, 'getloadavg') else '?'


def compare(args) -> list[dict]:
  """Alternates the variants in fresh processes, `rounds` times per model; prints the table."""
  variants = args.variants.split(',')
  rows = []
  for model in args.models.split(','):
    for r in range(args.rounds):
      for v in variants:
        row, _ = spawn(model, args.shape, VARIANTS[v], args.steps)
        row.update(model=model, variant=v, round=r, load=load_average())
        rows.append(row)
        print(f"  {model} {v} round {r}: trace {row['trace']:.2f}s lower {row['lower']:.2f}s "
              f"xla {row['xla']:.2f}s (cpu {row['cpu_xla']:.2f}s) total {row['total']:.2f}s"
              + (f" step {row['step']:.2f}s" if 'step' in row else '') + f" (load {row['load']})",
              flush=True)
  print_table(rows, variants, args.models.split(','), args.steps > 0)
  return rows


def print_table(rows, variants, models, with_steps) -> None:
  """Markdown table of medians per (model, variant) and the ratios to the first variant."""
  cols = ['trace', 'lower', 'xla', 'cpu_xla', 'total'] + ['step'] * with_steps
  print('\n| model | variant | ' + ' | '.join(f'{c} (s)' for c in cols) +
        ' | total / base | ' + 'step / base | ' * with_steps + 'loads |')
  print('|---|---|' + '---|' * (len(cols) + 2 + with_steps))
  for model in models:
    med = {v: {c: statistics.median(r[c] for r in rows if r['model'] == model and
                                    r['variant'] == v) for c in cols} for v in variants}
    for v in variants:
      loads = ','.join(r['load'] for r in rows if r['model'] == model and r['variant'] == v)
      cells = [f'{med[v][c]:.2f}' for c in cols]
      cells.append(f"{med[v]['total'] / med[variants[0]]['total']:.2f}")
      if with_steps:
        cells.append(f"{med[v]['step'] / med[variants[0]]['step']:.2f}")
      print(f'| {model} | {v} | ' + ' | '.join(cells) + f' | {loads} |')


def cache_sweep(args) -> list[dict]:
  """N processes, same shapes, one fresh persistent cache: the first compiles, the rest hit."""
  rows = []
  for model in args.models.split(','):
    with tempfile.TemporaryDirectory() as cache:
      for i in range(args.cache_runs):
        row, _ = spawn(model, args.shape, '', cache_dir=cache)
        files = sum(len(f) for _, _, f in os.walk(cache))
        row.update(model=model, run=i, cache_files=files, load=load_average())
        rows.append(row)
        print(f"  {model} run {i}: total {row['total']:.2f}s (trace {row['trace']:.2f}s, "
              f"lower {row['lower']:.2f}s, xla/cache {row['xla']:.2f}s), {files} cache "
              f"files, load {row['load']}", flush=True)
  print('\n| model | run | cache | total (s) | trace (s) | lower (s) | XLA or cache read (s) |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['model']} | {r['run'] + 1} | {'miss' if r['run'] == 0 else 'hit'} | "
          f"{r['total']:.2f} | {r['trace']:.2f} | {r['lower']:.2f} | {r['xla']:.2f} |")
  return rows


def step_timers(log: str) -> dict[str, float]:
  """Seconds per XLA timer of the step's module (the last one compiled) from a VLOG(1) log.

  Pass timers carry no module name; they are logged as each pass ends, before the "Running HLO
  passes on [module]" line that closes their pipeline, so the passes between two such lines
  belong to the second. A pass that runs several times (fixed-point pipelines) is summed; a
  pipeline's own line includes its passes."""
  modules, pending = [], {}
  for line in log.splitlines():
    m = _TIMER.search(line)
    if not m:
      continue
    label, secs = m.group(1).strip(), int(m.group(2)) * 1e-6
    if label.startswith('HLO pass: '):
      pending[label[10:]] = pending.get(label[10:], 0.0) + secs
    elif label.startswith('Running HLO passes on ['):
      modules.append(dict(pending, **{'(all HLO passes)': secs}))
      pending = {}
    elif label.startswith('Compiling [') and modules:
      modules[-1]['(codegen + LLVM, after the HLO passes)'] = secs
      modules[-1].update({f'({k})': v for k, v in pending.items()})  # backend pipelines
      pending = {}
  return max(modules, key=lambda t: t['(all HLO passes)']) if modules else {}


def pass_times(args, top: int = 20) -> list[dict]:
  """One process per model with XLA's scoped timers logged; prints the slowest timers."""
  rows = []
  for model in args.models.split(','):
    row, log = spawn(model, args.shape, '', env_extra={'TF_CPP_MIN_LOG_LEVEL': '0',
                                                       'TF_CPP_VMODULE': PASS_VMODULE})
    ranked = sorted(step_timers(log).items(), key=lambda kv: -kv[1])[:top]
    print(f"\n{model}: XLA compile {row['xla']:.2f}s (with logging); slowest timers:")
    for name, secs in ranked:
      print(f'  {secs:7.2f}s  {name[:140]}')
    lines = [l for l in log.splitlines() if _TIMER.search(l) and 'HLO pass:' not in l]
    rows.append(dict(row, model=model, timers=dict(ranked), other_timer_lines=lines))
  return rows


def main(argv=None) -> None:
  """Entry point: the comparison table, the cache sweep or the pass ranking."""
  args = parse_args(argv)
  if args.worker:
    return worker(args)
  print(f'load average {load_average()}, {os.cpu_count()} cores, shape {args.shape}', flush=True)
  if args.cache_runs:
    rows = cache_sweep(args)
  elif args.passes:
    rows = pass_times(args)
  else:
    rows = compare(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
