"""Old path of `senet_jax.tools.complexity`, kept for one release: its public names, and
`python -m senet_jax.complexity` prints where the tool moved, then runs it."""
from senet_jax.tools.complexity import *  # noqa: F401,F403
from senet_jax.tools.complexity import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.complexity', 'senet_jax.tools.complexity', main))
