"""eSE: effective Squeeze-Excitation (Lee & Park, CenterMask / VoVNetV2, CVPR 2020).

    out = x * gate(W . GAP(x) + b)        # one C -> C FC, no bottleneck

Keeping all C channels avoids the information loss of SE's reduction; the gate is
hard-sigmoid as in the paper. The FC is named `fc` as in timm's `EffectiveSEModule`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers


class EffectiveSE(nn.Module):
  """eSE gate over the channels of an NHWC tensor (`gate`: 'hard_sigmoid' in the paper)."""
  gate: str = 'hard_sigmoid'
  record_name: str | None = None
  kernel_init: Callable = layers.he_normal_fan_out
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_choice('se_gate', self.gate, tuple(layers.ACTIVATIONS))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    z = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    z = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=self.kernel_init, name='fc')(z)
    s = layers.ACTIVATIONS[self.gate](z)
    if self.record_name:
      self.sow('intermediates', self.record_name, s)
    return x * s.astype(x.dtype)
