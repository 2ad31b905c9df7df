"""Device ceilings and the fraction of them a compiled JAX step reaches.

A step's arithmetic is the model FLOPs of the papers' convention (2 x the convolution and dense
MACs that `senet_jax.models.counting` counts, x3 for a training step: the backward pass does
twice the forward's work); its bytes are XLA's estimate for the compiled (fused) module, which is
what the step reads and writes in device memory. The ceilings are measured on the device, as
METHOD-style roofline work asks, not read off a datasheet: a large matrix product for the
arithmetic rate (bf16 on an accelerator, float32 on the CPU, the dtype each steps in), and a
large elementwise pass (bytes read + bytes written) for the bandwidth.
"""
from __future__ import annotations

import statistics
import time


def _cost(analysis) -> dict:
  """jax returns a dict (newer) or a one-element list of dicts (older)."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return analysis or {}


def step_cost(model, resolution: int, batch: int, train: bool, compiled) -> dict:
  """{'gflop': model FLOPs, 'gbytes': XLA's bytes accessed} of one step of `compiled`."""
  from senet_jax.models import counting
  _, macs = counting.count(model, resolution)
  flops = 2 * macs * batch * (3 if train else 1)
  nbytes = _cost(compiled.cost_analysis()).get('bytes accessed', float('nan'))
  return {'gflop': flops / 1e9, 'gbytes': nbytes / 1e9}


def _median_seconds(fn, arg, repeats: int) -> float:
  fn(arg).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(arg).block_until_ready()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_ceilings(matmul_n: int = 8192, copy_gb: float = 2.0, repeats: int = 10,
                     dtype: str = 'bfloat16') -> dict:
  """Measured `dtype` matmul TFLOP/s and memory bandwidth (TB/s, read + write) of device 0."""
  import jax
  import jax.numpy as jnp
  keys = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(keys[0], (matmul_n, matmul_n), dtype)
  b = jax.random.normal(keys[1], (matmul_n, matmul_n), dtype)
  matmul = jax.jit(lambda a: a @ b)
  tflops = 2 * matmul_n ** 3 / _median_seconds(matmul, a, repeats) / 1e12
  x = jax.random.normal(keys[2], (int(copy_gb * 1e9 / jnp.dtype(dtype).itemsize),), dtype)
  scale = jax.jit(lambda x: x * 3)  # one read and one write of every element
  tb_s = 2 * x.nbytes / _median_seconds(scale, x, repeats) / 1e12
  del a, b, x
  return {'peak_tflops': tflops, 'peak_dtype': dtype, 'peak_tb_s': tb_s}


def achieved(row: dict, ceilings: dict) -> dict:
  """Adds achieved TFLOP/s, TB/s and their fractions of the measured ceilings to `row`."""
  steps_s = row['senet_jax_img_s'] / row['batch']
  out = {'jax_tflops': row['jax_gflop'] * steps_s / 1e3,
         'jax_tb_s': row['jax_gbytes'] * steps_s / 1e3, **ceilings}
  out['frac_peak_flops'] = out['jax_tflops'] / ceilings['peak_tflops']
  out['frac_hbm'] = out['jax_tb_s'] / ceilings['peak_tb_s']
  return out
