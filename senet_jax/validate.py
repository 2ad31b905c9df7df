"""Old path of `senet_jax.tools.evaluate`, kept for one release: its public names, and
`python -m senet_jax.validate` prints where the tool moved, then runs it."""
from senet_jax.tools.evaluate import *  # noqa: F401,F403
from senet_jax.tools.evaluate import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.validate', 'senet_jax.tools.evaluate', main))
