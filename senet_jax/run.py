r"""Run a Python script of your own under the fast allocator and main.py's XLA:CPU flags.

    python -m senet_jax.run my_train.py --lr=0.1
    python -m senet_jax.run -m mypackage.train --lr=0.1

The allocator (jemalloc where installed, else mimalloc from requirements.txt; 1.7x faster CPU
training steps than glibc malloc, `senet_jax.utils.allocator`) can only be chosen when a process
starts, so this starts the script in a new process image with it preloaded. `import senet_jax`
alone never restarts anything.
"""
from __future__ import annotations

import os
import sys

from senet_jax.utils import allocator


def main(argv: list[str] | None = None) -> int:
  """Replaces this process by `python ARGV...` under the fast allocator; returns 2 on misuse."""
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__.strip(), file=sys.stderr if not argv else sys.stdout)
    return 2 if not argv else 0
  env = allocator.jemalloc_env() or dict(os.environ)  # XLA_FLAGS: set by `import senet_jax`
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv], env)
  return 1  # not reached


if __name__ == '__main__':
  sys.exit(main())
