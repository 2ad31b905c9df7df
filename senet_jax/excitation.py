"""Old path of `senet_jax.tools.excitation`, kept for one release: its public names, and
`python -m senet_jax.excitation` prints where the tool moved, then runs it."""
from senet_jax.tools.excitation import *  # noqa: F401,F403
from senet_jax.tools.excitation import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.excitation', 'senet_jax.tools.excitation', main))
