"""BN-Inception (Ioffe & Szegedy 2015, Fig. 5) and SE-BN-Inception.

The module table is data (`MODULES`), transcribed from the BN paper's Figure 5 as released in
Caffe by the SENet authors (`SE-BN-Inception.prototxt`): convs with bias followed by BN and
ReLU, ceil-mode max pools, average-pool branches that count the zero padding (Caffe AVE).
SE sits on the output of every Inception module (after the concatenation), as in the authors'
release and the paper's Fig. 2 ("SE-Inception module"); gates are recorded as
'SE_<stage>_<module>' (inception_3a -> SE_3_1, ..., inception_5b -> SE_5_2).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models.base import SEModel
from senet_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class InceptionSpec:
  """Widths of one Inception module (BN paper Fig. 5); 0 means the branch is absent.

  `pool` is 'avg' or 'max' for the pooling branch; `stride` 2 modules (3c, 4e) have no 1x1
  branch, no pool projection and stride their 3x3 convs and their max pool.
  """
  name: str
  b1x1: int
  b3x3_reduce: int
  b3x3: int
  double_reduce: int
  double_3x3: int
  pool: str
  pool_proj: int
  stride: int = 1


MODULES = (
    InceptionSpec('3a', 64, 64, 64, 64, 96, 'avg', 32),
    InceptionSpec('3b', 64, 64, 96, 64, 96, 'avg', 64),
    InceptionSpec('3c', 0, 128, 160, 64, 96, 'max', 0, stride=2),
    InceptionSpec('4a', 224, 64, 96, 96, 128, 'avg', 128),
    InceptionSpec('4b', 192, 96, 128, 96, 128, 'avg', 128),
    InceptionSpec('4c', 160, 128, 160, 128, 160, 'avg', 128),
    InceptionSpec('4d', 96, 128, 192, 160, 192, 'avg', 128),
    InceptionSpec('4e', 0, 128, 192, 192, 256, 'max', 0, stride=2),
    InceptionSpec('5a', 352, 192, 320, 160, 224, 'avg', 128),
    InceptionSpec('5b', 352, 192, 320, 192, 224, 'max', 128),
)


class InceptionModule(nn.Module):
  """Four towers (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool[-1x1]) concatenated on channels."""
  spec: InceptionSpec
  conv_bn: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    spec, cb = self.spec, self.conv_bn
    s = spec.stride
    towers = []
    if spec.b1x1:
      towers.append(cb(spec.b1x1, 1, name='b1x1')(x, train))
    y = cb(spec.b3x3_reduce, 1, name='b3x3_reduce')(x, train)
    towers.append(cb(spec.b3x3, 3, s, name='b3x3')(y, train))
    y = cb(spec.double_reduce, 1, name='double_3x3_reduce')(x, train)
    y = cb(spec.double_3x3, 3, name='double_3x3_1')(y, train)
    towers.append(cb(spec.double_3x3, 3, s, name='double_3x3_2')(y, train))
    if s == 2:
      towers.append(layers.max_pool_ceil(x, 3, 2))
    else:
      pool = (layers.avg_pool(x, 3, 1, 1) if spec.pool == 'avg'
              else layers.max_pool_padded(x, 3, 1))
      towers.append(cb(spec.pool_proj, 1, name='pool_proj')(pool, train))
    return jnp.concatenate(towers, axis=-1)


class BNInception(SEModel):
  """BN-Inception / SE-BN-Inception (224 px; any size >= 32 works)."""
  modules: tuple[InceptionSpec, ...] = MODULES
  stem_widths: tuple[int, int, int] = (64, 64, 192)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm()

    def conv_bn(features, kernel, strides=1, name=None):
      return layers.ConvBNAct(features, kernel, strides, use_bias=True, conv=conv, norm=norm,
                              name=name)

    w1, w2, w3 = self.stem_widths
    x = conv_bn(w1, 7, 2, 'conv1_7x7_s2')(x.astype(self.dtype), train)
    x = layers.max_pool_ceil(x, 3, 2)
    x = conv_bn(w2, 1, name='conv2_3x3_reduce')(x, train)
    x = conv_bn(w3, 3, name='conv2_3x3')(x, train)
    x = layers.max_pool_ceil(x, 3, 2)
    index = {}
    for spec in self.modules:
      x = InceptionModule(spec, conv_bn, name=f'inception_{spec.name}')(x, train)
      stage = int(spec.name[0])
      index[stage] = index.get(stage, 0) + 1
      se = self.plugin_attn(stage, index[stage], train)
      if se is not None:
        x = se(name=f'se_{spec.name}')(x)
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(x)


register('bn_inception', BNInception, family='inception', se=False)
register('se_bn_inception', BNInception, family='inception', se=True)
