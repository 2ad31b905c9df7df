"""senet_jax: Squeeze-and-Excitation networks and the EfficientNet family in JAX/Flax.

Importing the package sets the XLA:CPU flags `main.py` runs with (see
`senet_jax.utils.xla_flags`): XLA reads them when JAX starts its backend, so `import senet_jax`
before the first JAX computation gives a plain script the same speed as `main.py`. It does not
import JAX itself. Opt out with SENET_NO_XLA_FLAGS=1.
"""
from senet_jax.utils import xla_flags as _xla_flags

_xla_flags.configure_xla_cpu()
