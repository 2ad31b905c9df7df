"""Hand-written CPU kernels, registered with XLA as FFI custom calls.

- `depthwise_cpu.cc`: the weight gradient of a depthwise convolution, where XLA:CPU copies a
  shifted slice of the activations for every kernel tap before reducing it (EfficientNet's
  depthwise weight gradients took ~20% of a B0 training step).
- `grouped_cpu.cc`: stride-1 grouped convolution, forward and weight gradient (XLA:CPU's own
  grouped convolution is 10-100x slower than a dense one).

The C++ sources are compiled on first use with the system's C++ compiler (`$CXX`, else `c++`)
against the FFI headers jaxlib ships, into `$SENET_KERNEL_CACHE` (default
`~/.cache/senet_jax/kernels`), keyed by a hash of the sources, the compiler, its flags and the
jaxlib version (not their paths, so checkouts and environments share a build); the file is written under a temporary name and renamed, so concurrent
processes never load a half-written library. Without a compiler, or with
`SENET_NO_CPU_KERNELS=1`, `available()` is False and callers keep their XLA formulation.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(__file__)
SOURCES = ('depthwise_cpu.cc', 'grouped_cpu.cc')
HEADERS = ('parallel.h',)
TARGET = 'senet_depthwise_weight_grad'  # FFI target names
GROUPED_FORWARD = 'senet_grouped_conv_forward'
GROUPED_WEIGHT_GRAD = 'senet_grouped_conv_weight_grad'
# FFI target name -> handler symbol in the library.
TARGETS = {TARGET: 'SenetDepthwiseWeightGrad', GROUPED_FORWARD: 'SenetGroupedConvForward',
           GROUPED_WEIGHT_GRAD: 'SenetGroupedConvWeightGrad'}
CXXFLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-fno-math-errno')


def _compiler() -> str | None:
  return shutil.which(os.environ.get('CXX', 'c++'))


def _build_command(compiler: str, output: str) -> list[str]:
  return [compiler, *CXXFLAGS, f'-I{jax.ffi.include_dir()}', f'-I{HERE}',
          *(os.path.join(HERE, s) for s in SOURCES), '-o', output]


def _cache_path(compiler: str) -> str:
  import jaxlib
  key = hashlib.sha256()
  for name in SOURCES + HEADERS:
    with open(os.path.join(HERE, name), 'rb') as f:
      key.update(f.read())
  # What the library depends on: sources, compiler, flags and jaxlib (whose version fixes the
  # FFI headers). Not where the sources or headers sit: every checkout and environment of the
  # same code shares one build (a fresh clone's test run built it twice, 17 s each, once for its
  # .venv and once for the install test's).
  key.update(' '.join((compiler, *CXXFLAGS, jaxlib.__version__)).encode())
  cache = os.environ.get('SENET_KERNEL_CACHE',
                         os.path.join(os.path.expanduser('~'), '.cache', 'senet_jax', 'kernels'))
  return os.path.join(cache, f'senet_cpu_kernels-{key.hexdigest()[:16]}.so')


def build() -> str:
  """Compiles the kernels if they are not in the cache; returns the shared library's path."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError(f"no C++ compiler found (CXX={os.environ.get('CXX', 'c++')!r})")
  path = _cache_path(compiler)
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    try:
      result = subprocess.run(_build_command(compiler, tmp), capture_output=True, text=True)
      if result.returncode:
        raise RuntimeError(f'compiling {", ".join(SOURCES)} failed:\n{result.stderr[-2000:]}')
      os.replace(tmp, path)  # atomic: other processes see no library or a whole one
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return path


@functools.cache
def available() -> bool:
  """True once the kernels are built and registered with XLA:CPU (built on first call)."""
  if os.environ.get('SENET_NO_CPU_KERNELS'):
    return False
  try:
    library = ctypes.cdll.LoadLibrary(build())
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform='cpu')
  except (OSError, RuntimeError, AttributeError) as err:
    logging.warning('senet_jax CPU kernels unavailable, using XLA formulations: %s', err)
    return False
  return True


def _ffi_call(target: str, out, pads):
  """The custom call `target` with the pad attributes every kernel takes (top and left; the
  output shape implies bottom and right), registering the kernels first if no caller has yet."""
  if not available():
    raise RuntimeError(f'{target}: the senet_jax CPU kernels are not available (see the log)')
  call = jax.ffi.ffi_call(target, out, vmap_method='sequential')
  return functools.partial(call, pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]))


def depthwise_weight_grad(x, dy, kernel_hw: tuple[int, int], strides: int,
                          pads: tuple[tuple[int, int], tuple[int, int]]):
  """(KH, KW, C) float32 weight gradient of a depthwise conv (depth multiplier 1) with input
  `x` (N, H, W, C), output gradient `dy` (N, Ho, Wo, C), explicit `pads` ((top, bottom),
  (left, right))."""
  out = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1]), jnp.float32)
  call = _ffi_call(TARGET, out, pads)
  return call(x.astype(jnp.float32), dy.astype(jnp.float32), stride=np.int64(strides))


def grouped_conv_forward(x, kernel, pads):
  """Stride-1 grouped conv, float32: x (N, H, W, Cin), kernel (KH, KW, Cin / G, Cout),
  explicit `pads` ((top, bottom), (left, right))."""
  kh, kw, _, cout = kernel.shape
  out = jax.ShapeDtypeStruct((x.shape[0], x.shape[1] + sum(pads[0]) - kh + 1,
                              x.shape[2] + sum(pads[1]) - kw + 1, cout), jnp.float32)
  call = _ffi_call(GROUPED_FORWARD, out, pads)
  return call(x.astype(jnp.float32), kernel.astype(jnp.float32))


def grouped_conv_weight_grad(x, dy, kernel_shape, pads):
  """Weight gradient of `grouped_conv_forward` for output gradient `dy`."""
  out = jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32)
  call = _ffi_call(GROUPED_WEIGHT_GRAD, out, pads)
  return call(x.astype(jnp.float32), dy.astype(jnp.float32))
