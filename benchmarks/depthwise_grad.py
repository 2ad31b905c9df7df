r"""Depthwise convolution input gradient: gather form vs autodiff's transpose, side by side.

    python benchmarks/depthwise_grad.py                 # EfficientNet-B0's depthwise shapes
    python benchmarks/depthwise_grad.py --batch=64 --repeats=20

For each (map, channels, kernel, stride) of EfficientNet-B0 at 224 px it times, in one process
and alternating, the compiled input gradient of senet_jax's shifted multiply-add depthwise conv
in two forms: `autodiff` (jax.vjp of the forward: k*k padded copies of dy added up) and `gather`
(`conv_impls.conv_shift_input_grad`: dy dilated by the stride and padded, one stride-1 pass of
the flipped kernel), after checking both equal XLA's gradient. It prints milliseconds, the ratio
autodiff / gather (> 1: gather faster) and which form `conv_shift` uses for that shape.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (height = width, channels, kernel, stride) of EfficientNet-B0's depthwise convs at 224 px.
SHAPES = [(112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (56, 144, 5, 2), (28, 240, 5, 1),
          (28, 240, 3, 2), (14, 480, 3, 1), (14, 672, 5, 1), (14, 672, 5, 2), (7, 1152, 5, 1)]


def _median_ms(fn, args, repeats):
  fn(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--repeats', type=int, default=10)
  args = p.parse_args(argv)
  from senet_jax.utils import xla_flags
  xla_flags.configure_xla_cpu()  # the convolution engine main.py runs with
  import jax
  import numpy as np
  from senet_jax.ops import conv_impls
  print('| map x channels | kernel | stride | autodiff (ms) | gather (ms) | autodiff / gather '
        '| conv_shift uses |\n|---|---|---|---|---|---|---|')
  totals = [0.0, 0.0]
  for hw, c, k, s in SHAPES:
    rng = np.random.RandomState(0)
    x = jax.numpy.asarray(rng.randn(args.batch, hw, hw, c).astype(np.float32))
    w = jax.numpy.asarray(rng.randn(k, k, 1, c).astype(np.float32))
    pads = conv_impls._pads(x.shape, w.shape, s, 'SAME')
    y, xla_vjp = jax.vjp(lambda x: conv_impls.conv_xla(x, w, s, pads, c), x)
    dy = jax.numpy.asarray(rng.randn(*y.shape).astype(np.float32))
    autodiff = jax.jit(lambda dy, x, w: jax.vjp(
        lambda x: conv_impls._conv_shift(x, w, s, pads), x)[1](dy)[0])
    gather = jax.jit(lambda dy, x, w: conv_impls.conv_shift_input_grad(dy, w, s, pads, x.shape))
    for fn in (autodiff, gather):
      np.testing.assert_allclose(fn(dy, x, w), xla_vjp(dy)[0], rtol=1e-3, atol=1e-3)
    ms = [0.0, 0.0]
    for _ in range(2):  # alternate so machine noise hits both forms
      for i, fn in enumerate((autodiff, gather)):
        ms[i] += _median_ms(fn, (dy, x, w), args.repeats) / 2
    totals = [t + m for t, m in zip(totals, ms)]
    uses = 'gather' if conv_impls.gathers_input_grad((k, k)) else 'autodiff'
    print(f'| {hw}x{hw}x{c} | {k}x{k} | {s} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.2f} '
          f'| {uses} |', flush=True)
  print(f'| total | | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f} | |')


if __name__ == '__main__':
  main()
