"""Inception-ResNet-v2 (Szegedy et al. 2017) and SE-Inception-ResNet-v2.

Layout and names follow timm's `inception_resnet_v2` (the Google TF-slim model ported), so
timm weights convert by name: conv (no bias) + BN(eps 1e-3) + ReLU units, residual blocks
Block35 x10 (scale 0.17), Block17 x20 (0.10), Block8 x9 (0.20) + a final linear Block8.
SE placement (SE paper, Fig. 3 and Sec. 4: "SE on the residual branch before the summation"):
each residual block's branch output -- after its 1x1 up-projection, before the residual
scaling and the sum -- is gated, recorded as 'SE_<stage>_<block>' (stages 1-3 = the 35x35,
17x17 and 8x8 grids; the last, linear Block8 is block 10 of stage 3).

`padding='same'` pads the convs and pools that the original leaves unpadded, like TF-slim's
`align_feature_maps=True`: any input >= 32 px then works (tiny test and digit runs); the
default 'valid' is the published network (299 px, minimum 75).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from senet_jax.models import layers
from senet_jax.models.base import SEModel
from senet_jax.models.registry import register

# (towers of each residual block, width of the block) per stage; a tower is a list of
# (features, kernel) convs. Kernels (1, 7) / (7, 1) are the factorised 7x7 of Block17.
BLOCK35 = ([(32, 1)], [(32, 1), (32, 3)], [(32, 1), (48, 3), (64, 3)])
BLOCK17 = ([(192, 1)], [(128, 1), (160, (1, 7)), (192, (7, 1))])
BLOCK8 = ([(192, 1)], [(192, 1), (224, (1, 3)), (256, (3, 1))])
STAGES = ((BLOCK35, 320, 0.17, 'repeat'), (BLOCK17, 1088, 0.10, 'repeat_1'),
          (BLOCK8, 2080, 0.20, 'repeat_2'))


def _towers(x, towers, conv_bn, train, prefix='branch', last=None):
  """Runs each tower (a list of convs) on x; a single-conv tower is named '<prefix>I'.

  `last`, when given, builds the last conv of every tower (the strided reduction convs).
  """
  outs = []
  for t, tower in enumerate(towers):
    y = x
    for c, (features, kernel) in enumerate(tower):
      name = f'{prefix}{t}' if len(tower) == 1 else f'{prefix}{t}_{c}'
      make = last if last is not None and c == len(tower) - 1 else conv_bn
      y = make(features, kernel, name=name)(y, train)
    outs.append(y)
  return outs


class ResidualInceptionBlock(nn.Module):
  """relu(x + scale * SE(conv1x1(concat(towers(x))))); linear (no ReLU) when `relu` is False."""
  towers: Any
  width: int
  scale: float
  conv_bn: Any
  conv: Any
  se_layer: Any = None
  relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = jnp.concatenate(_towers(x, self.towers, self.conv_bn, train), axis=-1)
    y = self.conv(self.width, 1, use_bias=True, name='conv2d')(y)
    if self.se_layer is not None:
      y = self.se_layer(name='se')(y)
    y = x + self.scale * y
    return nn.relu(y) if self.relu else y


class InceptionResNetV2(SEModel):
  """Inception-ResNet-v2 / SE-Inception-ResNet-v2; `stage_sizes` = Block35/17/8 repeats."""
  stage_sizes: Sequence[int] = (10, 20, 9)
  dropout_rate: float = 0.2
  padding: str = 'valid'
  bn_epsilon: float = 1e-3

  def __post_init__(self):
    layers.check_choice('padding', self.padding, ('valid', 'same'))
    if len(self.stage_sizes) != 3:
      raise ValueError(f'stage_sizes must have 3 entries (Block35, Block17, Block8 repeats), '
                       f'got {tuple(self.stage_sizes)}')
    super().__post_init__()

  @nn.nowrap
  def min_resolution(self) -> int:
    """Smallest input size: the unpadded stem and reductions need 75 px, 'same' 32."""
    return 75 if self.padding == 'valid' else 32

  @nn.nowrap
  def _unpadded(self) -> str:
    """Padding of the convs the original leaves unpadded."""
    return 'tf_same' if self.padding == 'same' else 'valid'

  @nn.nowrap
  def _max_pool(self, x):
    if self.padding == 'valid':
      return layers.max_pool(x, 3, 2, ((0, 0), (0, 0)))
    return layers.max_pool(x, 3, 2, lax.padtype_to_pads(x.shape[1:3], (3, 3), (2, 2), 'SAME'))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm()
    conv_bn = functools.partial(layers.ConvBNAct, conv=conv, norm=norm)
    reduce = functools.partial(conv_bn, strides=2, padding=self._unpadded())
    valid = self._unpadded()
    x = x.astype(self.dtype)
    x = reduce(32, 3, name='conv2d_1a')(x, train)
    x = conv_bn(32, 3, padding=valid, name='conv2d_2a')(x, train)
    x = conv_bn(64, 3, name='conv2d_2b')(x, train)
    x = self._max_pool(x)
    x = conv_bn(80, 1, name='conv2d_3b')(x, train)
    x = conv_bn(192, 3, padding=valid, name='conv2d_4a')(x, train)
    x = self._max_pool(x)
    x = self._mixed_5b(x, conv_bn, train)
    x = self._stage(0, x, conv_bn, conv, train)
    towers = _towers(x, ([(384, 3)], [(256, 1), (256, 3), (384, 3)]), conv_bn, train,
                     prefix='mixed_6a_branch', last=reduce)
    x = jnp.concatenate(towers + [self._max_pool(x)], axis=-1)
    x = self._stage(1, x, conv_bn, conv, train)
    towers = _towers(x, ([(256, 1), (384, 3)], [(256, 1), (288, 3)],
                         [(256, 1), (288, 3), (320, 3)]), conv_bn, train,
                     prefix='mixed_7a_branch', last=reduce)
    x = jnp.concatenate(towers + [self._max_pool(x)], axis=-1)
    x = self._stage(2, x, conv_bn, conv, train)
    x = ResidualInceptionBlock(BLOCK8, 2080, 1.0, conv_bn, conv, relu=False, name='block8',
                               se_layer=self.plugin_attn(3, self.stage_sizes[2] + 1, train))(
                                   x, train)
    x = conv_bn(1536, 1, name='conv2d_7b')(x, train)
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classif')(x)

  def _mixed_5b(self, x, conv_bn, train):
    towers = _towers(x, ([(96, 1)], [(48, 1), (64, 5)], [(64, 1), (96, 3), (96, 3)]), conv_bn,
                     train, prefix='mixed_5b_branch')
    pool = layers.avg_pool(x, 3, 1, 1, count_include_pad=False)
    towers.append(conv_bn(64, 1, name='mixed_5b_branch3_1')(pool, train))
    return jnp.concatenate(towers, axis=-1)

  def _stage(self, s, x, conv_bn, conv, train):
    towers, width, scale, name = STAGES[s]
    for b in range(self.stage_sizes[s]):
      x = ResidualInceptionBlock(towers, width, scale, conv_bn, conv, name=f'{name}_{b}',
                                 se_layer=self.plugin_attn(s + 1, b + 1, train))(x, train)
    return x


register('inception_resnet_v2', InceptionResNetV2, family='inception', resolution=299,
         se=False, dropout_rate=0.2)
register('se_inception_resnet_v2', InceptionResNetV2, family='inception', resolution=299,
         se=True, dropout_rate=0.2)
