"""MobileNet (v1) and SE-MobileNet; MobileNetV3-Large/Small (SE with a hard-sigmoid gate).

SE-MobileNet: the SE paper (Table 3) adds SE to "1.0 MobileNet-224"; with one SE block (r=16)
after every depthwise-separable block -- i.e. on the block's output, after the pointwise
conv's BN and ReLU -- the parameters go 4.23M -> 4.71M, which is the paper's 4.2M -> 4.7M
(an SE after the depthwise conv instead would add only ~0.15M). Gates: 'SE_<stage>_<block>'.

MobileNetV3 follows timm's `tf_mobilenetv3_{large,small}_100` (the TF release): block strings
in timm's notation, expanded widths and SE widths rounded to multiples of 8, SE on the
expanded tensor (ReLU inside, hard-sigmoid gate), TF 'SAME' padding and BN eps 1e-3, a 1x1
head conv with bias after global pooling. timm weights convert by name (`senet_jax.convert`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.base import SEModel
from senet_jax.models.efficientnet import MBConv
from senet_jax.models.registry import register

# (output channels, stride of the first block, blocks) per stage; stem 3x3/2 to 32 channels.
V1_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 2, 6), (1024, 2, 2))


def _check_act_and_padding(act: str, padding: str) -> None:
  layers.check_choice('act', act, tuple(layers.ACTIVATIONS))
  layers.check_choice('padding', padding, layers.PADDING_MODES)


class DepthwiseSeparable(nn.Module):
  """3x3 depthwise conv, BN, act -> 1x1 conv, BN, act -> [SE] (MobileNet v1 block)."""
  out_channels: int
  strides: int
  conv: Any
  norm: Any
  act: Any
  se_layer: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bn = lambda name: self.norm(use_running_average=not train, name=name)
    channels = x.shape[-1]
    x = self.act(bn('bn_dw')(self.conv(channels, 3, self.strides, groups=channels,
                                       name='conv_dw')(x)))
    x = self.act(bn('bn_pwl')(self.conv(self.out_channels, 1, 1, name='conv_pwl')(x)))
    return x if self.se_layer is None else self.se_layer(name='se')(x)


class MobileNetV1(SEModel):
  """MobileNet v1 / SE-MobileNet; `width` is the paper's multiplier alpha (multiples of 8)."""
  stages: Sequence[tuple[int, int, int]] = V1_STAGES
  width: float = 1.0
  stem_channels: int = 32
  act: str = 'relu'
  padding: str = 'symmetric'

  def __post_init__(self):
    _check_act_and_padding(self.act, self.padding)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm(padding=self.padding)
    act = layers.get_activation(self.act, 'act')
    scaled = lambda c: se_lib.make_divisible(c * self.width, 8)
    x = conv(scaled(self.stem_channels), 3, 2, name='conv_stem')(x.astype(self.dtype))
    x = act(norm(use_running_average=not train, name='bn_stem')(x))
    for s, (channels, stride, blocks) in enumerate(self.stages):
      for b in range(blocks):
        x = DepthwiseSeparable(scaled(channels), stride if b == 0 else 1, conv, norm, act,
                               se_layer=self.plugin_attn(s + 1, b + 1, train),
                               name=f'blocks_{s}_{b}')(x, train)
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier')(x)


@dataclasses.dataclass(frozen=True)
class V3Block:
  """One row of timm's MobileNetV3 notation, e.g. 'ir_r3_k5_s2_e3_c40_se0.25_nre'.

  kind: 'ds' (depthwise-separable), 'ir' (inverted residual) or 'cn' (conv-BN-act);
  se: whether the block has SE; relu: 'nre' blocks use ReLU instead of the model's act.
  """
  kind: str
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: float
  out_channels: int
  se: bool
  relu: bool


def decode_v3_block(block_string: str) -> V3Block:
  """Parses timm's MobileNetV3 block notation (kind_rN_kK_sS_eE_cC[_seR][_nre])."""
  kind, *ops = block_string.split('_')
  if kind not in ('ds', 'ir', 'cn'):
    raise ValueError(f'bad block string {block_string!r}: kind must be ds, ir or cn')
  opts = {}
  for op in ops:
    match = re.fullmatch(r'(nre|se|[rksec])([\d.]*)', op)
    if not match:
      raise ValueError(f'bad block string {block_string!r}: cannot parse {op!r}')
    opts[match.group(1)] = match.group(2)
  missing = {'r', 'k', 's', 'c'} - set(opts)
  if missing:
    raise ValueError(f'bad block string {block_string!r}: missing {sorted(missing)}')
  return V3Block(kind, int(opts['r']), int(opts['k']), int(opts['s']),
                 float(opts.get('e', 1)), int(opts['c']), 'se' in opts, 'nre' in opts)


V3_LARGE = (
    ('ds_r1_k3_s1_e1_c16_nre',),
    ('ir_r1_k3_s2_e4_c24_nre', 'ir_r1_k3_s1_e3_c24_nre'),
    ('ir_r3_k5_s2_e3_c40_se0.25_nre',),
    ('ir_r1_k3_s2_e6_c80', 'ir_r1_k3_s1_e2.5_c80', 'ir_r2_k3_s1_e2.3_c80'),
    ('ir_r2_k3_s1_e6_c112_se0.25',),
    ('ir_r3_k5_s2_e6_c160_se0.25',),
    ('cn_r1_k1_s1_c960',),
)
V3_SMALL = (
    ('ds_r1_k3_s2_e1_c16_se0.25_nre',),
    ('ir_r1_k3_s2_e4.5_c24_nre', 'ir_r1_k3_s1_e3.67_c24_nre'),
    ('ir_r1_k5_s2_e4_c40_se0.25', 'ir_r2_k5_s1_e6_c40_se0.25'),
    ('ir_r2_k5_s1_e3_c48_se0.25',),
    ('ir_r3_k5_s2_e6_c96_se0.25',),
    ('cn_r1_k1_s1_c576',),
)


class MobileNetV3(SEModel):
  """MobileNetV3 from stage tables of block strings (`V3_LARGE`, `V3_SMALL`).

  SE defaults are MobileNetV3's: width = make_divisible(expanded / 4, 8), ReLU, hard-sigmoid;
  `se=False` removes every SE block (the paper's ablation).
  """
  stages: Sequence[Sequence[str]] = V3_LARGE
  stem_channels: int = 16
  head_channels: int = 1280
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.0
  act: str = 'hard_swish'
  se_reduction: float = 4
  se_width_rule: str = 'divisible'
  se_gate: str = 'hard_sigmoid'
  padding: str = 'tf_same'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3

  def __post_init__(self):
    _check_act_and_padding(self.act, self.padding)
    for stage in self.stages:
      for block in stage:
        decode_v3_block(block)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm(padding=self.padding)
    act = layers.get_activation(self.act, 'act')
    x = conv(self.stem_channels, 3, 2, name='conv_stem')(x.astype(self.dtype))
    x = act(norm(use_running_average=not train, name='bn_stem')(x))
    specs = [[decode_v3_block(b) for b in stage] for stage in self.stages]
    total = sum(r.repeats for stage in specs for r in stage)
    index = 0
    for s, stage in enumerate(specs):
      b = 0
      for row in stage:
        for r in range(row.repeats):
          x = self._block(row, x, row.stride if r == 0 else 1, conv, norm,
                          nn.relu if row.relu else act, self.drop_path_rate * index / total,
                          (s + 1, b + 1), f'blocks_{s}_{b}', train)
          b, index = b + 1, index + 1
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)[:, None, None, :].astype(self.dtype)
    x = act(conv(self.head_channels, 1, 1, use_bias=True, name='conv_head')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier')(x)

  def _block(self, row, x, strides, conv, norm, act, drop_path, se_at, name, train):
    in_channels = x.shape[-1]
    if row.kind == 'cn':
      return layers.ConvBNAct(row.out_channels, row.kernel_size, strides, padding=self.padding,
                              act=act, conv=conv, norm=norm, name=name)(x, train)
    mid = in_channels if row.kind == 'ds' else se_lib.make_divisible(
        in_channels * row.expand_ratio, 8)
    return MBConv(in_channels, row.out_channels, row.kernel_size, strides,
                  1 if row.kind == 'ds' else row.expand_ratio,
                  se_layer=self.plugin_attn(*se_at, train) if row.se else None, mid_channels=mid,
                  drop_path_rate=drop_path, conv=conv, norm=norm, act=act, name=name)(x, train)


register('mobilenet_v1', MobileNetV1, family='mobilenet', se=False)
register('se_mobilenet_v1', MobileNetV1, family='mobilenet', se=True)
register('mobilenetv3_large_100', MobileNetV3, family='mobilenet', dropout_rate=0.2)
register('mobilenetv3_small_100', MobileNetV3, family='mobilenet', stages=V3_SMALL,
         head_channels=1024, dropout_rate=0.2)
register('mobilenetv3_large_100_no_se', MobileNetV3, family='mobilenet', se=False,
         dropout_rate=0.2)
register('mobilenetv3_small_100_no_se', MobileNetV3, family='mobilenet', stages=V3_SMALL,
         head_channels=1024, se=False, dropout_rate=0.2)
