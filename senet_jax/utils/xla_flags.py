"""XLA:CPU flags that make convolutions fast, and which CPU convolution engine is in use.

jaxlib 0.10 hands XLA:CPU convolutions to YNNPACK by default. On the 2-core AVX-512 machines
this project is measured on, XLA's other CPU convolution path (Eigen) runs the dense kxk
convolutions of ResNets 1.1-2x faster forward and 1.5-3x faster forward + backward
(benchmarks/train_step.py, README "Speed"), and compiles SE-ResNeXt-50's training step in
20 s instead of 48 s. `configure_xla_cpu()` turns YNNPACK convolutions off (YNNPACK keeps the
matmuls, where it is fast) by appending `CPU_CONV_FLAG` to XLA_FLAGS. `import senet_jax` calls
it, so a program that imports senet_jax before its first JAX computation runs as fast as
`main.py` (XLA reads XLA_FLAGS when JAX starts its backend, not at `import jax`); imported
later, it warns once that the flag could not be applied. `ops.select_conv_policy()` reads
`cpu_conv_engine()` (once per model, in `create_model`) to pick the fastest formulations for
the engine actually in use, so such a program (or one that sets its own
`xla_cpu_experimental_ynn_fusion_type`) is still correct.
Opt out with SENET_NO_XLA_FLAGS=1.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

CPU_CONV_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
_YNN_FLAG = re.compile(r'--xla_cpu_experimental_ynn_fusion_type=(\S*)')
# First jaxlib measured with the flag (older ones may not know it, and XLA aborts on unknown
# flags); jaxlib versions before YNNPACK convolutions ran them on Eigen anyway.
MIN_JAXLIB = (0, 10)


def _jaxlib_version() -> tuple[int, ...]:
  from jaxlib import version
  return tuple(int(p) for p in re.findall(r'\d+', version.__version__)[:3])


def xla_flags_with_cpu_conv(environ=None) -> str | None:
  """The XLA_FLAGS value to run with, or None when nothing should change."""
  environ = os.environ if environ is None else environ
  flags = environ.get('XLA_FLAGS', '')
  if environ.get('SENET_NO_XLA_FLAGS') or _YNN_FLAG.search(flags):
    return None  # opted out, or the user chose YNNPACK's fusion types themselves
  if _jaxlib_version() < MIN_JAXLIB:
    return None
  return f'{flags} {CPU_CONV_FLAG}'.strip()


def _backend_started() -> bool:
  """Whether JAX has created its backends (after which XLA_FLAGS is no longer read)."""
  if 'jax' not in sys.modules:  # not imported yet: nothing started, and no need to import it
    return False
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


_warned = False


def configure_xla_cpu() -> bool:
  """Appends `CPU_CONV_FLAG` to XLA_FLAGS unless JAX already started; True when it is in effect.

  Called by `import senet_jax`. When JAX's CPU backend is already running it changes nothing
  and warns once: the convolutions then stay on YNNPACK (slower training steps on CPU).
  """
  global _warned
  flags = xla_flags_with_cpu_conv()
  if flags is None:
    return CPU_CONV_FLAG in os.environ.get('XLA_FLAGS', '')
  if not _backend_started():
    os.environ['XLA_FLAGS'] = flags
    return True
  import jax
  if jax.default_backend() == 'cpu' and not _warned:
    _warned = True
    warnings.warn(
        'senet_jax was imported after JAX started its CPU backend, so XLA_FLAGS could not take '
        'convolutions off YNNPACK (CPU training steps run up to ~1.5x slower). Import senet_jax '
        f'before the first JAX computation, or start Python with XLA_FLAGS="{CPU_CONV_FLAG}"; '
        'SENET_NO_XLA_FLAGS=1 silences this.', stacklevel=2)
  return False


def cpu_conv_engine(environ=None) -> str:
  """'eigen' when XLA_FLAGS takes convolutions away from YNNPACK, else 'ynn' (the default)."""
  environ = os.environ if environ is None else environ
  match = None
  for match in _YNN_FLAG.finditer(environ.get('XLA_FLAGS', '')):
    pass  # XLA applies the last occurrence
  if match is None:
    return 'ynn'
  items = [item for item in match.group(1).split(',') if item]
  if items and all(item[0] in '+-' for item in items):  # edits of the default list
    return 'eigen' if '-individual_convolution' in items else 'ynn'
  return 'ynn' if 'individual_convolution' in items else 'eigen'
