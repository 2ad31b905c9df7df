"""Old path of `senet_jax.tools.predict`, kept for one release: its public names, and
`python -m senet_jax.predict` prints where the tool moved, then runs it."""
from senet_jax.tools.predict import *  # noqa: F401,F403
from senet_jax.tools.predict import main

if __name__ == '__main__':
  import sys

  from senet_jax.utils import cli
  sys.exit(cli.run_moved('senet_jax.predict', 'senet_jax.tools.predict', main))
