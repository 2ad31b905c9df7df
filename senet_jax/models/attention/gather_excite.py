"""Gather-Excite (Hu et al., NeurIPS 2018).

    g = gather(x)                 # (N, ceil(H/e), ceil(W/e), C): context over an extent e
    out = x * gate(excite(g)) upsampled (nearest) to (H, W)

Variants (paper Sec. 3): GE-theta-minus gathers with an average pool of window 2e-1, stride e
(global average for extent 0) and has no parameters; GE-theta gathers with log2(e) depthwise
3x3 stride-2 convs, each followed by BN (and the activation between them), or one depthwise
conv spanning the whole map for extent 0; GE-theta-plus adds SE's MLP in the excite step
(`use_mlp`). The arithmetic follows timm's `GatherExcite`, whose names are kept
(`gather_conv<i>`/`gather_bn<i>` for gather.conv<i>/norm<i>, `reduce`/`expand` for mlp.fc1/fc2).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib


def nearest_upsample(g: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of NHWC `g` to `size` (PyTorch's mode='nearest' indexing)."""
  (h, w), (out_h, out_w) = g.shape[1:3], size
  rows = (jnp.arange(out_h) * h) // out_h
  cols = (jnp.arange(out_w) * w) // out_w
  return g[:, rows][:, :, cols]


class GatherExcite(nn.Module):
  """Gather-Excite gate; the defaults are the paper's parameter-free GE-theta-minus (global).

  Attributes:
    extent: gather extent e (0: global; else a power of two).
    extra_params: GE-theta (depthwise conv gather) instead of the parameter-free average.
    use_mlp: the SE MLP in the excite step (GE-theta-plus); `reduction`, `width_rule`, `act`,
      `use_bias` configure it.
    train: batch statistics for the gather BatchNorms (set by the model per call).
    conv, norm: the model's conv and norm constructors.
  """
  extent: int = 0
  extra_params: bool = False
  use_mlp: bool = False
  reduction: float = 16
  width_rule: str = 'floor'
  act: str = 'relu'
  gate: str = 'sigmoid'
  use_bias: bool = True
  train: bool = False
  record_name: str | None = None
  conv: Callable[..., nn.Module] = layers.Conv2d
  norm: Callable[..., nn.Module] = nn.BatchNorm
  kernel_init: Callable = layers.he_normal_fan_out
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.extent < 0 or (self.extent and self.extent & (self.extent - 1)):
      raise ValueError(f'gather_excite extent must be 0 (global) or a power of two, '
                       f'got {self.extent}')
    se_lib.validate_se_options(squeeze='avg', gate=self.gate, act=self.act,
                               width_rule=self.width_rule, reduction=self.reduction)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    g = self._gather_params(x) if self.extra_params else self._gather_free(x)
    if self.use_mlp:
      channels = x.shape[-1]
      fc = lambda n, name: nn.Conv(n, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                                   param_dtype=jnp.float32, kernel_init=self.kernel_init,
                                   name=name)
      width = se_lib.reduced_width(channels, self.reduction, self.width_rule)
      g = fc(channels, 'expand')(layers.ACTIVATIONS[self.act](fc(width, 'reduce')(g)))
    s = layers.ACTIVATIONS[self.gate](g)
    if self.record_name:
      self.sow('intermediates', self.record_name, s)
    if s.shape[1:3] != (1, 1):
      s = nearest_upsample(s, x.shape[1:3])
    return x * s.astype(x.dtype)

  def _gather_free(self, x):
    if self.extent == 0:
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    window = 2 * self.extent - 1
    return layers.avg_pool(x, window, self.extent, window // 2, count_include_pad=False)

  def _gather_params(self, x):
    channels = x.shape[-1]
    if self.extent == 0:  # one depthwise conv spanning the whole map
      convs = [dict(kernel_size=tuple(x.shape[1:3]), strides=1, padding='valid')]
    else:
      convs = [dict(kernel_size=3, strides=2, padding='symmetric')] * int(math.log2(self.extent))
    for i, conv_args in enumerate(convs, start=1):
      x = self.conv(channels, groups=channels, name=f'gather_conv{i}', **conv_args)(x)
      x = self.norm(use_running_average=not self.train, name=f'gather_bn{i}')(x)
      if i < len(convs):
        x = layers.ACTIVATIONS[self.act](x)
    return x
