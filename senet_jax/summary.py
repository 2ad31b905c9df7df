"""Old path of `senet_jax.tools.summary`, kept for one release: its public names, and
`python -m senet_jax.summary` prints where the tool moved, then runs it."""
from senet_jax.tools.summary import *  # noqa: F401,F403
from senet_jax.tools.summary import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.summary', 'senet_jax.tools.summary', main))
