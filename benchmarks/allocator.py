r"""XLA:CPU under each allocator setting: time, page faults and peak memory of a training step.

    python benchmarks/allocator.py                       # EfficientNet-B0, 224 px, batch 16
    python benchmarks/allocator.py --model=se_resnet50 --shape=64x64 --rounds=3

Each setting (`settings()`: glibc as is, tuned, THP; jemalloc when installed, mimalloc given a path) runs the same compiled
step in a fresh process (the compiled step comes from a shared compilation cache after the first
one), in alternating rounds so machine noise hits all of them; it prints per setting the median
ms per step, minor page faults per step (getrusage) and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Keep freed memory: nothing through mmap, no trimming, one arena (worker threads' large
# blocks would otherwise be mmapped by their own arenas whatever mmap_max says).
GLIBC_TUNED = ('glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:'
               'glibc.malloc.top_pad=67108864:glibc.malloc.arena_max=1')


def settings(mimalloc: str | None) -> dict[str, dict[str, str]]:
  """Setting name -> environment overrides."""
  from senet_jax.utils import allocator
  out = {'glibc default': {},
         'glibc tuned (GLIBC_TUNABLES)': {'GLIBC_TUNABLES': GLIBC_TUNED},
         'glibc THP (hugetlb=1)': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}}
  jemalloc = allocator.find_jemalloc()
  if jemalloc:
    out['jemalloc'] = {'LD_PRELOAD': jemalloc, 'MALLOC_CONF': allocator.MALLOC_CONF}
  if mimalloc:
    out['mimalloc'] = {'LD_PRELOAD': mimalloc, 'MIMALLOC_PURGE_DELAY': '-1'}
  return out


def child(args) -> None:
  """Compiles (or loads from the cache) one training step, runs it, prints JSON."""
  import resource
  import time
  from senet_jax.utils import xla_flags
  xla_flags.configure_xla_cpu()
  import jax
  jax.config.update('jax_compilation_cache_dir', args.cache)
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import train_step
  res, batch = (int(v) for v in args.shape.split('x'))
  run, _, _ = train_step.jax_runner(args.model, {}, res, batch, True, 'float32', 'auto')
  run()
  run()
  times, cpu_times, faults = [], [], []
  cpu = lambda u: u.ru_utime + u.ru_stime
  for _ in range(args.steps):
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    faults.append(u1.ru_minflt - u0.ru_minflt)
    cpu_times.append(cpu(u1) - cpu(u0))
  # CPU seconds (all threads) per step: unlike wall time, barely moved by other processes on a
  # shared machine, so settings can be compared there too.
  print(json.dumps({'ms': 1e3 * statistics.median(times), 'faults': statistics.median(faults),
                    'cpu_ms': 1e3 * statistics.median(cpu_times),
                    'peak_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--model', default='efficientnet_b0')
  p.add_argument('--shape', default='224x16', help='RESOLUTIONxBATCH')
  p.add_argument('--steps', type=int, default=5, help='timed steps per process')
  p.add_argument('--rounds', type=int, default=2, help='processes per setting, alternating')
  p.add_argument('--mimalloc', default='', help='path of libmimalloc.so to compare')
  p.add_argument('--only', default='', help='comma-separated setting names')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--cache', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return child(args)
  cases = settings(args.mimalloc or None)
  if args.only:
    cases = {k: v for k, v in cases.items() if k in args.only.split(',')}
  results = {k: [] for k in cases}
  with tempfile.TemporaryDirectory() as cache:
    cmd = [sys.executable, os.path.abspath(__file__), '--child', f'--cache={cache}',
           f'--model={args.model}', f'--shape={args.shape}', f'--steps={args.steps}']
    base = {k: v for k, v in os.environ.items()
            if k not in ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF')}
    base['SENET_NO_JEMALLOC'] = '1'  # `import senet_jax` must not swap the allocator under test
    for _ in range(args.rounds):
      for name, env in cases.items():
        out = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True)
        if out.returncode:
          sys.exit(f'{name} failed:\n{out.stderr[-2000:]}')
        results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(name, results[name][-1], flush=True)
  print(f'\n{args.model} training step {args.shape}, median of {args.rounds} processes x '
        f'{args.steps} steps:')
  for name, rows in results.items():
    med = lambda key: statistics.median(r[key] for r in rows)
    print(f'  {name:32} {med("ms"):8.0f} ms/step {med("cpu_ms"):8.0f} CPU ms/step '
          f'{med("faults"):9.0f} faults/step '
          f'{med("peak_gb"):6.2f} GB peak RSS')


if __name__ == '__main__':
  main()
