"""Old path of `senet_jax.tools.sweep`, kept for one release: its public names, and
`python -m senet_jax.sweep` prints where the tool moved, then runs it."""
from senet_jax.tools.sweep import *  # noqa: F401,F403
from senet_jax.tools.sweep import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.sweep', 'senet_jax.tools.sweep', main))
