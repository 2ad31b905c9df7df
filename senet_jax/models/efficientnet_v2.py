"""EfficientNetV2 B0-B3, S, M, L, XL (Tan & Le, 2021): Fused-MBConv early, MBConv + SE late.

The architecture is data, in the official notation of google/automl `effnetv2_configs.py`:
'r4_k3_s2_e4_i24_o48_c1' is 4 blocks, 3x3 kernels, stride 2 (first block), expansion 4,
24 -> 48 channels, `c1` a Fused-MBConv (the 1x1 expansion and the depthwise kxk fused into one
kxk convolution); without `c1` the stage is V1's MBConv. SE sits only in the MBConv stages
(`se0.25`: bottleneck of 0.25 x the block *input* channels, as released).

Differences from V1 that change parameters: channels are rounded to a multiple of 8 without
V1's "never 10% below" correction; B0-B3 use V1's width/depth coefficients on the V2 base table,
S/M/L/XL are separate tables (no scaling). Defaults reproduce the official TF model (TF 'SAME'
padding, BN eps 1e-3, momentum 0.9), which is timm's `tf_efficientnetv2_*` and Keras'
`EfficientNetV2*`.

Blocks are numbered like V1's: stage 1 is the stem, block stages are 2.., so the gates of the
third block of the first MBConv stage of V2-S are 'SE_5_3'.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.attention.config import AttentionFields
from senet_jax.models.efficientnet import MBConv, decode_block_string, round_repeats
from senet_jax.models.registry import register
from senet_jax.ops import conv_impls

FIRST_STAGE = 2  # stage 1 is the stem

# google/automl efficientnetv2/effnetv2_configs.py: v2_base_block, v2_s_block, v2_m_block, ...
BASE_BLOCKS = (
    'r1_k3_s1_e1_i32_o16_c1', 'r2_k3_s2_e4_i16_o32_c1', 'r2_k3_s2_e4_i32_o48_c1',
    'r3_k3_s2_e4_i48_o96_se0.25', 'r5_k3_s1_e6_i96_o112_se0.25',
    'r8_k3_s2_e6_i112_o192_se0.25',
)
S_BLOCKS = (
    'r2_k3_s1_e1_i24_o24_c1', 'r4_k3_s2_e4_i24_o48_c1', 'r4_k3_s2_e4_i48_o64_c1',
    'r6_k3_s2_e4_i64_o128_se0.25', 'r9_k3_s1_e6_i128_o160_se0.25',
    'r15_k3_s2_e6_i160_o256_se0.25',
)
M_BLOCKS = (
    'r3_k3_s1_e1_i24_o24_c1', 'r5_k3_s2_e4_i24_o48_c1', 'r5_k3_s2_e4_i48_o80_c1',
    'r7_k3_s2_e4_i80_o160_se0.25', 'r14_k3_s1_e6_i160_o176_se0.25',
    'r18_k3_s2_e6_i176_o304_se0.25', 'r5_k3_s1_e6_i304_o512_se0.25',
)
L_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1', 'r7_k3_s2_e4_i32_o64_c1', 'r7_k3_s2_e4_i64_o96_c1',
    'r10_k3_s2_e4_i96_o192_se0.25', 'r19_k3_s1_e6_i192_o224_se0.25',
    'r25_k3_s2_e6_i224_o384_se0.25', 'r7_k3_s1_e6_i384_o640_se0.25',
)
XL_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1', 'r8_k3_s2_e4_i32_o64_c1', 'r8_k3_s2_e4_i64_o96_c1',
    'r16_k3_s2_e4_i96_o192_se0.25', 'r24_k3_s1_e6_i192_o256_se0.25',
    'r32_k3_s2_e6_i256_o512_se0.25', 'r8_k3_s1_e6_i512_o640_se0.25',
)

# name: (blocks, width, depth, train size, eval size, dropout) as in effnetv2_configs.py
# (`efficientnetv2_params`); the registered resolution is the eval size.
RELEASED = {
    'b0': (BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2), 'b1': (BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2),
    'b2': (BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3), 'b3': (BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3),
    's': (S_BLOCKS, 1.0, 1.0, 300, 384, 0.2), 'm': (M_BLOCKS, 1.0, 1.0, 384, 480, 0.3),
    'l': (L_BLOCKS, 1.0, 1.0, 384, 480, 0.4), 'xl': (XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4),
}


@dataclasses.dataclass(frozen=True)
class StageArgs:
  """One stage of the V2 table: V1's fields plus `fused` (the 'c1' flag)."""
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  in_channels: int
  out_channels: int
  se_ratio: float | None
  fused: bool


def decode_v2_block_string(block_string: str) -> StageArgs:
  """Parses 'r2_k3_s1_e1_i24_o24_c1' (V1 notation plus `c1` for Fused-MBConv)."""
  args = decode_block_string(block_string)
  conv_type = re.search(r'(?:^|_)c(\d)(?:_|$)', block_string)
  if conv_type and conv_type.group(1) not in '01':
    raise ValueError(f'bad block string {block_string!r}: conv type must be c0 or c1')
  return StageArgs(**dataclasses.asdict(args), fused=bool(conv_type and conv_type.group(1) == '1'))


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """V2 channel rounding: the nearest multiple of 8 (no V1 10% correction)."""
  return se_lib.make_divisible(filters * width, divisor, round_limit=0.0)


class FusedMBConv(nn.Module):
  """Fused-MBConv: kxk conv (stride, expand), BN, act -> [SE] -> 1x1 project, BN.

  With expand_ratio 1 the block is [SE ->] a single kxk conv, BN, act (`conv`, `bn`), as in the
  official code (released tables have no SE in fused stages). The residual (with
  stochastic depth) is used when stride is 1 and in == out channels.
  """
  in_channels: int
  out_channels: int
  kernel_size: int
  strides: int
  expand_ratio: float
  se_layer: Any = None
  drop_path_rate: float = 0.0
  conv: Any = layers.Conv2d
  norm: Any = nn.BatchNorm
  act: Any = nn.swish

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(self.norm, use_running_average=not train)
    shortcut = x
    if self.expand_ratio == 1:
      if self.se_layer is not None:  # official code: SE before the (only) convolution
        x = self.se_layer(name='se')(x)
      x = self.conv(self.out_channels, self.kernel_size, self.strides, name='conv')(x)
      x = self.act(norm(name='bn')(x))
    else:
      mid = int(self.in_channels * self.expand_ratio)
      x = self.conv(mid, self.kernel_size, self.strides, name='conv_exp')(x)
      x = self.act(norm(name='bn_exp')(x))
      if self.se_layer is not None:
        x = self.se_layer(name='se')(x)
      x = norm(name='bn_pwl')(self.conv(self.out_channels, 1, 1, name='conv_pwl')(x))
    if self.strides == 1 and self.in_channels == self.out_channels:
      x = layers.DropPath(self.drop_path_rate)(x, deterministic=not train) + shortcut
    return x


class EfficientNetV2(AttentionFields):
  """EfficientNetV2 from a block table, width/depth coefficients and SE knobs.

  Attention fields as in V1's `EfficientNet` (`AttentionFields`): `se` on/off, `attn_layer`,
  `se_stages` (stages 2..; None: the stages the table marks 'se', i.e. the MBConv stages; a
  tuple: exactly those stages, fused ones included), `se_reduction` (None: the table's
  1 / 0.25), `se_width_base` ('input' as released, or 'expanded'), `se_width_rule`,
  `se_squeeze`, `se_gate`, `se_act`.
  """
  width: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  blocks: Sequence[str] = S_BLOCKS
  head_channels: int = 1280
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.2
  padding: str = 'tf_same'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  act: str = 'swish'
  se_reduction: float | None = None
  se_width_base: str = 'input'
  se_act: str = 'swish'
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_choice('padding', self.padding, layers.PADDING_MODES)
    layers.check_choice('act', self.act, tuple(layers.ACTIVATIONS))
    layers.check_choice('se_width_base', self.se_width_base, ('input', 'expanded'))
    layers.check_choice('conv_impl', self.conv_impl, conv_impls.IMPLS)
    if self.se_reduction is not None and not self.se_reduction >= 1:
      raise ValueError(f'se_reduction must be >= 1, got {self.se_reduction!r}')
    super().__post_init__()

  @nn.nowrap
  def attention_stages(self) -> tuple[int, ...]:
    """Paper stages 2..(1 + number of block strings)."""
    return tuple(range(FIRST_STAGE, FIRST_STAGE + len(self.blocks)))

  @nn.nowrap
  def stage_args(self) -> list[StageArgs]:
    """The block table after width/depth scaling."""
    return [dataclasses.replace(
        args, in_channels=round_filters(args.in_channels, self.width),
        out_channels=round_filters(args.out_channels, self.width),
        repeats=round_repeats(args.repeats, self.depth))
            for args in map(decode_v2_block_string, self.blocks)]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.get_activation(self.act, 'act')
    conv = functools.partial(layers.Conv2d, padding=self.padding, impl=self.conv_impl,
                             dtype=self.dtype, kernel_init=layers.conv_kernel_init_fan_out())
    norm = functools.partial(nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=jnp.float32)
    bn = functools.partial(norm, use_running_average=not train)
    stages = self.stage_args()
    # The stem's width is the first stage's input width (official code).
    x = conv(stages[0].in_channels, 3, 2, name='conv_stem')(x.astype(self.dtype))
    x = act(bn(name='bn_stem')(x))
    total, index = sum(a.repeats for a in stages), 0
    for s, args in enumerate(stages):
      for b in range(args.repeats):
        in_channels = args.in_channels if b == 0 else args.out_channels
        block = FusedMBConv if args.fused else MBConv
        x = block(in_channels, args.out_channels, args.kernel_size,
                  args.stride if b == 0 else 1, args.expand_ratio,
                  se_layer=self._attn(FIRST_STAGE + s, b + 1, args, in_channels, conv, norm,
                                      train),
                  drop_path_rate=self.drop_path_rate * index / total, conv=conv, norm=norm,
                  act=act, name=f'blocks_{s}_{b}')(x, train)
        index += 1
    x = conv(round_filters(self.head_channels, self.width), 1, 1, name='conv_head')(x)
    x = act(bn(name='bn_head')(x))
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier',
                    kernel_init=layers.dense_kernel_init_uniform_fan_out)(x)

  @nn.nowrap
  def _attn(self, stage: int, block: int, args: StageArgs, in_channels: int, conv, norm, train):
    """The block's attention constructor: SE in the table's MBConv stages unless `se_stages`."""
    if self.se_stages is None and args.se_ratio is None:
      return None  # released V2: no SE in the Fused-MBConv stages
    reduction = self.se_reduction or 1.0 / (args.se_ratio or 0.25)
    base = in_channels if self.se_width_base == 'input' else in_channels * args.expand_ratio
    return self.attn(stage, block, reduction=reduction, width_base=base,
                     kernel_init=layers.conv_kernel_init_fan_out(), conv=conv, norm=norm,
                     dtype=self.dtype, train=train)

for _variant, (_blocks, _w, _d, _train, _eval, _drop) in RELEASED.items():
  register(f'efficientnetv2_{_variant}', EfficientNetV2, family='efficientnet', resolution=_eval,
           blocks=_blocks, width=_w, depth=_d, dropout_rate=_drop)
