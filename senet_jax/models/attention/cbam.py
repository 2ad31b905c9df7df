"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

    Mc = gate(MLP(AvgPool(F)) + MLP(MaxPool(F)))          # channel attention, shared MLP
    F' = Mc * F
    Ms = gate(BN(conv7x7([mean_c(F'), max_c(F')])))       # spatial attention over 2 maps
    out = Ms * F'

The BN after the spatial conv is in the authors' release (and timm); `spatial_norm=False`
drops it (the paper's eq. 3). Parameter names: the MLP is `reduce` / `expand` as in SE, the
spatial conv `spatial_conv` / `spatial_bn`; the channel gates are recorded as SE's are.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib


class CBAM(nn.Module):
  """Channel then spatial attention on an NHWC tensor.

  Attributes:
    reduction, width_rule: MLP width `reduced_width(C, reduction, width_rule)` (paper r = 16).
    act, gate, use_bias: MLP activation, gate non-linearity, MLP biases (authors' code: on;
      timm: off).
    spatial_kernel: size of the spatial conv (paper: 7).
    spatial_norm: BatchNorm after the spatial conv (authors' release).
    train: batch statistics for that BatchNorm (set by the model per call).
    conv, norm: the model's conv and norm constructors.
  """
  reduction: float = 16
  width_rule: str = 'floor'
  act: str = 'relu'
  gate: str = 'sigmoid'
  use_bias: bool = True
  spatial_kernel: int = 7
  spatial_norm: bool = True
  train: bool = False
  record_name: str | None = None
  conv: Callable[..., nn.Module] = layers.Conv2d
  norm: Callable[..., nn.Module] = nn.BatchNorm
  kernel_init: Callable = layers.he_normal_fan_out
  dtype: Any = jnp.float32

  def __post_init__(self):
    se_lib.validate_se_options(squeeze='avg', gate=self.gate, act=self.act,
                               width_rule=self.width_rule, reduction=self.reduction)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    width = se_lib.reduced_width(channels, self.reduction, self.width_rule)
    act, gate = layers.ACTIVATIONS[self.act], layers.ACTIVATIONS[self.gate]
    reduce = nn.Conv(width, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=self.kernel_init, name='reduce')
    expand = nn.Conv(channels, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=self.kernel_init, name='expand')
    x32 = x.astype(jnp.float32)
    pooled = [jnp.mean(x32, axis=(1, 2), keepdims=True), jnp.max(x32, axis=(1, 2), keepdims=True)]
    mc = gate(sum(expand(act(reduce(p.astype(self.dtype)))) for p in pooled))
    if self.record_name:
      self.sow('intermediates', self.record_name, mc)
    x = x * mc.astype(x.dtype)
    maps = jnp.concatenate([jnp.mean(x.astype(jnp.float32), axis=-1, keepdims=True),
                            jnp.max(x, axis=-1, keepdims=True).astype(jnp.float32)], axis=-1)
    ms = self.conv(1, self.spatial_kernel, 1, padding='symmetric', use_bias=not self.spatial_norm,
                   name='spatial_conv')(maps.astype(self.dtype))
    if self.spatial_norm:
      ms = self.norm(use_running_average=not self.train, name='spatial_bn')(ms)
    return x * gate(ms).astype(x.dtype)
