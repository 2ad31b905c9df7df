"""ShuffleNet v1 (Zhang et al. 2018) and SE-ShuffleNet.

Units (ShuffleNet paper, Fig. 2): 1x1 group conv, BN, ReLU -> channel shuffle -> 3x3 depthwise
conv (stride), BN -> 1x1 group conv, BN; stride 1: ReLU(x + branch); stride 2:
ReLU(concat(avgpool3x3/2(x), branch)). Bottleneck width = 1/4 of the unit's output; the first
pointwise conv of stage 2 is not grouped (its input has only 24 channels).

SE placement: on the unit's branch output, before the sum/concatenation (as in SE-ResNet). With
r = 16 this adds 0.61M parameters to ShuffleNet 1x (g=3): 1.87M -> 2.48M, the SE paper's
1.8M -> 2.4M (Table 3); SE on the unit's output (after the concatenation) would add 0.72M.
Gates: 'SE_<stage>_<unit>' with the paper's stage numbers 2-4.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models.base import SEModel
from senet_jax.models.registry import register

# Output channels of stages 2-4 for scale 1x, per number of groups (ShuffleNet paper Table 1).
STAGE_WIDTHS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                4: (272, 544, 1088), 8: (384, 768, 1536)}
FIRST_STAGE = 2


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """(..., g * n) channels read as (g, n), transposed to (n, g), flattened back."""
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


class ShuffleUnit(nn.Module):
  """One ShuffleNet unit; `first_groups` is the grouping of its first pointwise conv."""
  in_channels: int
  out_channels: int
  strides: int
  groups: int
  first_groups: int
  conv: Any
  norm: Any
  se_layer: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = lambda name: self.norm(use_running_average=not train, name=name)
    mid = self.out_channels // 4
    branch_out = self.out_channels - (self.in_channels if self.strides == 2 else 0)
    y = nn.relu(bn('bn1')(self.conv(mid, 1, groups=self.first_groups, name='conv1')(x)))
    y = channel_shuffle(y, self.groups)
    y = bn('bn2')(self.conv(mid, 3, self.strides, groups=mid, name='conv2')(y))
    y = bn('bn3')(self.conv(branch_out, 1, groups=self.groups, name='conv3')(y))
    if self.se_layer is not None:
      y = self.se_layer(name='se')(y)
    if self.strides == 1:
      return nn.relu(x + y)
    return nn.relu(jnp.concatenate([layers.avg_pool(x, 3, 2, 1), y], axis=-1))


class ShuffleNetV1(SEModel):
  """ShuffleNet v1 / SE-ShuffleNet: `groups` g, `scale` s (channels x s), units per stage."""
  groups: int = 3
  scale: float = 1.0
  stage_sizes: Sequence[int] = (4, 8, 4)
  stem_channels: int = 24

  def __post_init__(self):
    layers.check_choice('groups', self.groups, tuple(STAGE_WIDTHS))
    if len(self.stage_sizes) != 3:
      raise ValueError(f'stage_sizes must have 3 entries (stages 2-4), got '
                       f'{tuple(self.stage_sizes)}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm()
    x = conv(self.stem_channels, 3, 2, name='conv1')(x.astype(self.dtype))
    x = nn.relu(norm(use_running_average=not train, name='bn1')(x))
    x = layers.max_pool_padded(x, 3, 2)
    for s, units in enumerate(self.stage_sizes):
      # Widths scaled and kept divisible by 4 * groups (bottleneck = out / 4, grouped).
      out = int(STAGE_WIDTHS[self.groups][s] * self.scale) // (4 * self.groups) * 4 * self.groups
      for u in range(units):
        stride = 2 if u == 0 else 1
        x = ShuffleUnit(x.shape[-1], out, stride, self.groups,
                        1 if (s == 0 and u == 0) else self.groups, conv, norm,
                        se_layer=self.plugin_attn(FIRST_STAGE + s, u + 1, train),
                        name=f'stage{FIRST_STAGE + s}_{u}')(x, train)
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(x)


register('shufflenet_v1_g3', ShuffleNetV1, family='shufflenet', groups=3, se=False)
register('se_shufflenet_v1_g3', ShuffleNetV1, family='shufflenet', groups=3, se=True)
