"""Run under jemalloc, else pip's mimalloc, when installed (`reexec_with_jemalloc()`).

What XLA:CPU asks of the allocator (jaxlib 0.10, measured 2026-12-03 with strace and getrusage,
`python benchmarks/allocator.py`): each execution of a compiled step gets its temporaries as
ONE buffer (163 MiB for an EfficientNet-B0 training step at 64 px batch 16), mmapped on an XLA
worker thread and unmapped at the end, so under glibc every step page-faults all of it again
(41.7k minor faults per step). glibc's tunables (GLIBC_TUNABLES glibc.malloc.mmap_max=0,
trim_threshold, top_pad, arena_max=1, or hugetlb=1) left that at 41.7k faults per step (one
run each; why mmap_max=0 with one arena did not keep the buffer on the heap is not understood),
so none is set. An allocator that keeps freed pages does fix it: mimalloc from the pip package
`cmeel-mimalloc` (no root) with purging off measured 0 faults per step (peak RSS 1.18 GB vs
glibc's 0.95-1.20). At 224 px batch 16 it makes the step 1.7x faster (1033 vs 1768 ms, 0 vs
459.6k faults per step; `python benchmarks/allocator.py --mimalloc=PATH`). `cmeel-mimalloc` is
in requirements.txt (Linux). jemalloc with one arena and no decay, where installed
(`apt-get install libjemalloc2`), is preferred as before. SENET_NO_JEMALLOC=1 opts out of both.

An allocator can only be chosen when a process starts (LD_PRELOAD), so `main.py` re-executes
itself first thing, and so do the tools run as commands (`utils.cli.run`). A user's own script
opts in explicitly: `python -m senet_jax.run script.py` or `senet_jax.use_fast_allocator()` as
its first statement (`reexec_for_script()`); `import senet_jax` alone never restarts a process
(a restart runs the lines above the import twice: surprising for debuggers, multiprocessing
and scripts with side effects). Only a script run as `python script.py ...` or
`python -m module ...` is restarted, with its exact command line (`sys.orig_argv`), and only
before JAX has started a backend; never an interactive session, `python -c`, pytest or a
notebook kernel.
"""
from __future__ import annotations

import os
import sys

CANDIDATES = ('/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', '/usr/lib/aarch64-linux-gnu/'
              'libjemalloc.so.2', '/usr/lib64/libjemalloc.so.2', '/usr/lib/libjemalloc.so.2',
              '/usr/local/lib/libjemalloc.so.2', '/opt/homebrew/lib/libjemalloc.2.dylib')
# One arena: with decay off, per-thread arenas each keep their own freed pages (measured
# 9.3 GB peak for an EfficientNet-B0 step vs 5.4 GB with glibc); one arena keeps glibc's peak.
MALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:1'


def find_jemalloc() -> str | None:
  """Path of an installed jemalloc shared library, or None."""
  return next((p for p in CANDIDATES if os.path.exists(p)), None)


def find_mimalloc() -> str | None:
  """libmimalloc of the pip package `cmeel-mimalloc` when it is installed, or None."""
  import sysconfig
  paths = sysconfig.get_paths()
  candidates = (os.path.join(paths[k], 'cmeel.prefix', 'lib', 'libmimalloc.so.3')
                for k in ('purelib', 'platlib'))
  return next((p for p in candidates if os.path.exists(p)), None)


def jemalloc_env(environ=None) -> dict[str, str] | None:
  """The environment to re-run with (jemalloc, else pip's mimalloc), or None when not needed
  or not possible."""
  environ = dict(os.environ if environ is None else environ)
  preloaded = environ.get('LD_PRELOAD', '')
  if environ.get('SENET_NO_JEMALLOC') or 'jemalloc' in preloaded or 'mimalloc' in preloaded:
    return None
  if not sys.platform.startswith('linux'):
    return None
  library, settings = find_jemalloc(), {'MALLOC_CONF': environ.get('MALLOC_CONF', MALLOC_CONF)}
  if library is None:
    # Freed pages are kept (no purge), as jemalloc's decay -1: measured 0 page faults per
    # step instead of 41.7k (EfficientNet-B0, 64 px batch 16).
    library, settings = find_mimalloc(), {
        'MIMALLOC_PURGE_DELAY': environ.get('MIMALLOC_PURGE_DELAY', '-1')}
  if library is None:
    return None
  preload = ' '.join(p for p in (library, preloaded) if p)
  return {**environ, 'LD_PRELOAD': preload, **settings, 'SENET_NO_JEMALLOC': '1'}


def reexec_with_jemalloc() -> None:
  """Replaces the current process by the same command under jemalloc or mimalloc (if found)."""
  env = jemalloc_env()
  if env is not None:
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


# Hosts whose process must never be restarted by an import: test runners, notebooks, REPLs.
_NO_RESTART_MODULES = ('pytest', '_pytest', 'IPython', 'ipykernel', 'code', 'pdb')


def is_restartable_script(argv=None, orig_argv=None, modules=None) -> bool:
  """Whether this process is a `python script.py` / `python -m module` run that can be restarted
  with the same command line (not interactive, `-c`, stdin, a test runner or a notebook)."""
  argv = sys.argv if argv is None else argv
  orig_argv = getattr(sys, 'orig_argv', None) if orig_argv is None else orig_argv
  modules = sys.modules if modules is None else modules
  if not orig_argv or not argv or argv[0] in ('', '-c', '-'):
    return False
  if sys.flags.interactive or hasattr(sys, 'ps1') or '-i' in orig_argv[1:2]:
    return False
  if any(name in modules for name in _NO_RESTART_MODULES):
    return False
  return os.path.isfile(argv[0])


def reexec_for_script() -> None:
  """Restarts a plain script under the fast allocator, before JAX starts (the tools' commands
  and `senet_jax.use_fast_allocator()`).

  The same process id and the exact command line (`sys.orig_argv`, so `python -m pkg.mod` and
  interpreter options are kept); nothing happens when opted out (SENET_NO_JEMALLOC=1), when no
  faster allocator is installed, or when JAX already runs a backend (the script has done work
  that a restart would repeat).
  """
  if not is_restartable_script():
    return
  if 'jax' in sys.modules:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      return
  env = jemalloc_env()
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), env)


def print_env() -> None:
  """Prints the variables to run under (`env $(...) cmd`; the Makefile's pytest runs), or nothing."""
  import shlex
  env = jemalloc_env()
  if env is not None:
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    print(' '.join(shlex.quote(f'{k}={v}') for k, v in sorted(changed.items())))
