"""senet_jax: Squeeze-and-Excitation networks and the EfficientNet family in JAX/Flax.

Importing the package sets the XLA:CPU flags `main.py` runs with (see
`senet_jax.utils.xla_flags`): XLA reads them when JAX starts its backend, so `import senet_jax`
before the first JAX computation gives a plain script the same convolution engine as `main.py`.
It does not import JAX itself, and it never restarts the process. Opt out with
SENET_NO_XLA_FLAGS=1.

The faster allocator (1.7x faster CPU training steps than glibc malloc; see
`senet_jax.utils.allocator`) can only be chosen when a process starts. `main.py`, the console
scripts and `python -m senet_jax.tools.<tool>` start under it; a script of your own opts in with
`python -m senet_jax.run script.py [args]`, or by calling `senet_jax.use_fast_allocator()` as
its first statement (it restarts the script once, so lines above it run twice).

`create_model(name, pretrained=...)` here is the models' `create_model` plus hub weights
(`senet_jax.pretrained`).
"""
from senet_jax.utils import xla_flags as _xla_flags

_xla_flags.configure_xla_cpu()


def use_fast_allocator() -> None:
  """Restarts this script (same command line, same pid) under jemalloc / mimalloc, unless it
  already runs under one, it is not a plain `python script.py` / `python -m` run (REPL,
  notebook, pytest), or JAX has already started. Call it first thing in the script."""
  from senet_jax.utils import allocator
  allocator.reexec_for_script()


def create_model(name: str, **kwargs):
  """`senet_jax.pretrained.create_model`: a registered model, with hub weights on request."""
  from senet_jax import pretrained
  return pretrained.create_model(name, **kwargs)
