"""senet_jax: Squeeze-and-Excitation networks and the EfficientNet family in JAX/Flax.

Importing the package sets the XLA:CPU flags `main.py` runs with (see
`senet_jax.utils.xla_flags`): XLA reads them when JAX starts its backend, so `import senet_jax`
before the first JAX computation gives a plain script the same speed as `main.py`. It does not
import JAX itself. Opt out with SENET_NO_XLA_FLAGS=1.

A script run as `python script.py` or `python -m module` that imports senet_jax before JAX
starts is also restarted once, with the same command line, under the faster allocator
(`senet_jax.utils.allocator.reexec_for_script`: 1.7x faster CPU training steps than glibc
malloc); notebooks, `python -c`, the REPL and pytest never are. Opt out with SENET_NO_JEMALLOC=1.
"""
from senet_jax.utils import allocator as _allocator
from senet_jax.utils import xla_flags as _xla_flags

_allocator.reexec_for_script()
_xla_flags.configure_xla_cpu()
