"""ECA: Efficient Channel Attention (Wang et al., CVPR 2020).

    y = GAP(x)                      # (N, C)
    w = gate(conv1d_k(y))           # one k-tap filter slid over the channel axis, no bias
    out = x * w

The kernel size adapts to the channels: k = |log2(C) / gamma + b / gamma|_odd (paper eq. 12,
gamma = 2, b = 1), computed as the authors' code does (truncate, then the next odd number).
Parameter names follow timm's `EcaModule` (`conv`), so `ecaresnet*` weights convert by name.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
  """Adaptive kernel size k = |(log2 C + b) / gamma|_odd (paper eq. 12, official rounding)."""
  t = int(abs((math.log2(channels) + beta) / gamma))
  return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
  """ECA gate over the channels of an NHWC tensor.

  Attributes:
    kernel_size: taps of the channel conv; None: adaptive (`eca_kernel_size`).
    gamma, beta: the adaptive-size mapping's parameters (paper: 2 and 1).
    gate: gate non-linearity ('sigmoid' in the paper).
    record_name: name the gates are sown under; None: not recorded.
    dtype: compute dtype; the pooling is accumulated in float32.
  """
  kernel_size: int | None = None
  gamma: float = 2
  beta: float = 1
  gate: str = 'sigmoid'
  record_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_choice('se_gate', self.gate, tuple(layers.ACTIVATIONS))
    if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
      raise ValueError(f'ECA kernel_size must be a positive odd number, got {self.kernel_size}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    k = self.kernel_size or eca_kernel_size(channels, self.gamma, self.beta)
    y = jnp.mean(x.astype(jnp.float32), axis=(1, 2))[..., None].astype(self.dtype)  # (N, C, 1)
    # A 1-D conv over the channel axis with one input and one output feature, zero padded.
    y = nn.Conv(1, (k,), padding=[((k - 1) // 2, (k - 1) // 2)], use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, name='conv')(y)
    s = layers.ACTIVATIONS[self.gate](y[..., 0])[:, None, None, :]
    if self.record_name:
      self.sow('intermediates', self.record_name, s)
    return x * s.astype(x.dtype)
