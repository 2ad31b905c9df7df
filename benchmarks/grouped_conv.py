r"""Grouped 3x3 convolutions, forward + backward: every senet_jax formulation vs PyTorch.

    python benchmarks/grouped_conv.py                        # SE-ResNeXt-50 (32x4d) shapes
    python benchmarks/grouped_conv.py --groups=64 --impls=split,dense

For each NHWC shape it times jit(value_and_grad) of sum(conv(x, w)**2) w.r.t. x and w for each
formulation in `senet_jax.ops.conv_impls` (after checking it equals
`lax.conv_general_dilated`) and the same step of `torch.nn.Conv2d(groups=G)`, median of several
runs with the same thread count, and prints milliseconds and the ratio torch / formulation
(> 1: faster than PyTorch). 'xla' is skipped on maps smaller than 7x7 (minutes on CPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (batch, height, width, channels) of the 3x3 grouped convs of ResNeXt-50 at 224x16 and 64x64.
SHAPES = '16x56x56x128,16x28x28x256,16x14x14x512,16x7x7x1024,64x16x16x128,64x8x8x256,' \
         '64x4x4x512,64x2x2x1024'


def _median_ms(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def jax_step(impl, x, w, groups):
  """Compiled fwd+bwd of one formulation; checks its forward against XLA's grouped conv."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from senet_jax.ops import conv_impls
  pads = ((1, 1), (1, 1))
  conv = lambda x, w: conv_impls.conv(x, w, 1, pads, groups, impl)
  ref = jax.jit(lambda x, w: conv_impls.conv_xla(x, w, 1, pads, groups))(x, w)
  np.testing.assert_allclose(np.asarray(jax.jit(conv)(x, w)), np.asarray(ref), rtol=1e-3,
                             atol=1e-2)
  step = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
  return lambda: jax.block_until_ready(step(x, w))


def torch_step(shape, groups):
  import torch
  n, h, w, c = shape
  x = torch.randn(n, c, h, w, requires_grad=True)
  conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)

  def step():
    x.grad = None
    conv.zero_grad()
    (conv(x) ** 2).sum().backward()
  return step


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--shapes', default=SHAPES, help='NxHxWxC, comma separated')
  p.add_argument('--groups', type=int, default=32)
  p.add_argument('--impls', default='direct,split,dense,xla')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  args = p.parse_args(argv)
  from senet_jax.utils import xla_flags
  xla_flags.configure_xla_cpu()  # the CPU convolution engine main.py uses
  import jax
  import torch
  torch.set_num_threads(args.threads)
  impls = args.impls.split(',')
  print(f'| shape (NHWC) | groups | {" | ".join(f"{i} ms" for i in impls)} | torch ms | '
        f'{" | ".join(f"torch / {i}" for i in impls)} |')
  print('|---' * (2 + 2 * len(impls) + 1) + '|')
  for spec in args.shapes.split(','):
    shape = tuple(int(v) for v in spec.split('x'))
    x = jax.random.normal(jax.random.key(0), shape)
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, shape[-1] // args.groups, shape[-1]))
    ms = {impl: (_median_ms(jax_step(impl, x, w, args.groups), args.repeats)
                 if impl != 'xla' or shape[1] >= 7 else float('nan')) for impl in impls}
    reference = _median_ms(torch_step(shape, args.groups), args.repeats)
    print(f'| {spec} | {args.groups} | ' + ' | '.join(f'{ms[i]:.1f}' for i in impls)
          + f' | {reference:.1f} | ' + ' | '.join(f'{reference / ms[i]:.2f}' for i in impls)
          + ' |', flush=True)


if __name__ == '__main__':
  main()
