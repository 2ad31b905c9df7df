"""EfficientNet B0-B8 and L2: the B0 block table, compound scaling and TF-exact MBConv blocks.

The architecture is data: B0's block strings (official notation) are decoded once into
`BlockArgs`, then scaled by width/depth coefficients with the official rounding rules.
`EfficientNetBase` builds any such table (stem, MBConv / Fused-MBConv stages, head); V1
(`EfficientNet`, here) and V2 (`efficientnet_v2.EfficientNetV2`) are subclasses that change
field defaults, the channel rounding and the rule for blocks without an SE ratio.
Defaults reproduce the original TensorFlow model (TF 'SAME' padding, BN eps 1e-3 / momentum
0.99, official initialisers); `TIMM_FLAVOUR` gives timm's `efficientnet_*` (symmetric padding,
PyTorch BN defaults), which has the same parameters.

Blocks are numbered by the paper's stage table: stage 1 is the stem, MBConv stages are 2..8, so
the gates of the second block of stage 4 are recorded as 'SE_4_2'.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import base
from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.attention.config import AttentionFields
from senet_jax.models.registry import register
from senet_jax.ops import conv_impls
from senet_jax.ops.policy import ConvPolicy

B0_BLOCKS = (
    'r1_k3_s11_e1_i32_o16_se0.25', 'r2_k3_s22_e6_i16_o24_se0.25',
    'r2_k5_s22_e6_i24_o40_se0.25', 'r3_k3_s22_e6_i40_o80_se0.25',
    'r3_k5_s11_e6_i80_o112_se0.25', 'r4_k5_s22_e6_i112_o192_se0.25',
    'r1_k3_s11_e6_i192_o320_se0.25',
)
FIRST_STAGE = 2  # stage 1 of the paper's table is the stem

# (width, depth, resolution, dropout) of the released models, rounded by hand by the authors from
# compound scaling (see `compound_scaling`).
RELEASED = {
    'b0': (1.0, 1.0, 224, 0.2), 'b1': (1.0, 1.1, 240, 0.2), 'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3), 'b4': (1.4, 1.8, 380, 0.4), 'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5), 'b7': (2.0, 3.1, 600, 0.5), 'b8': (2.2, 3.6, 672, 0.5),
    'l2': (4.3, 5.3, 800, 0.5),
}

# timm's non-`tf_` EfficientNets: same parameters, PyTorch conventions.
TIMM_FLAVOUR = dict(padding='symmetric', bn_momentum=0.9, bn_epsilon=1e-5)


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  """One stage of blocks, decoded from a block string like 'r2_k3_s22_e6_i16_o24_se0.25'.

  `fused` ('c1', EfficientNetV2's notation): Fused-MBConv blocks instead of MBConv.
  """
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  in_channels: int
  out_channels: int
  se_ratio: float | None
  fused: bool = False


def decode_block_string(block_string: str) -> BlockArgs:
  """Parses the official/timm block notation (r repeats, k kernel, s stride, e, i, o, se, and
  V2's conv type c0 / c1)."""
  opts = {}
  for op in block_string.split('_'):
    match = re.fullmatch(r'([a-z]+)([\d.]+)', op)
    if not match:
      raise ValueError(f'bad block string {block_string!r}: cannot parse {op!r}')
    opts[match.group(1)] = match.group(2)
  missing = {'r', 'k', 's', 'e', 'i', 'o'} - set(opts)
  if missing:
    raise ValueError(f'bad block string {block_string!r}: missing {sorted(missing)}')
  strides = opts['s']
  if len(strides) == 2 and strides[0] != strides[1]:
    raise ValueError(f'bad block string {block_string!r}: only square strides are supported')
  if opts.get('c', '0') not in ('0', '1'):
    raise ValueError(f'bad block string {block_string!r}: conv type must be c0 or c1')
  return BlockArgs(int(opts['r']), int(opts['k']), int(strides[0]), int(opts['e']),
                   int(opts['i']), int(opts['o']), float(opts['se']) if 'se' in opts else None,
                   fused=opts.get('c') == '1')


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """Official channel rounding: a multiple of 8, never more than 10% below filters * width."""
  return se_lib.make_divisible(filters * width, divisor)


def round_repeats(repeats: int, depth: float) -> int:
  """Official depth rounding: ceil(depth * repeats)."""
  return int(math.ceil(depth * repeats))


def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                     base_resolution: int = 224) -> tuple[float, float, int]:
  """Compound scaling (paper eq. 3): returns (width, depth, resolution) for exponent `phi`.

  depth = alpha**phi, width = beta**phi, resolution = gamma**phi * base_resolution (rounded to a
  multiple of 8), with alpha * beta**2 * gamma**2 ~= 2 so FLOPs grow ~2**phi. The released
  B1-B7 use coefficients the authors rounded by hand: e.g. phi=1 gives (1.1, 1.2, 256) while
  B1 is (1.0, 1.1, 240); see the README's table.
  """
  resolution = int(round(base_resolution * gamma ** phi / 8) * 8)
  return beta ** phi, alpha ** phi, resolution


class _InvertedResidual(nn.Module):
  """What MBConv and Fused-MBConv share: their fields and the stochastic-depth residual."""
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

  def residual(self, x: jax.Array, shortcut: jax.Array, train: bool) -> jax.Array:
    """x + shortcut (with stochastic depth) when stride is 1 and in == out channels, else x."""
    if self.strides == 1 and self.in_channels == self.out_channels:
      x = layers.DropPath(self.drop_path_rate)(x, deterministic=not train) + shortcut
    return x


class MBConv(_InvertedResidual):
  """Inverted residual: [1x1 expand, BN, act] -> depthwise kxk, BN, act -> SE -> 1x1 project, BN.

  The residual (with stochastic depth) is used when stride is 1 and in == out channels.
  `mid_channels` (None: in_channels * expand_ratio) sets the expanded width directly
  (MobileNetV3 rounds it to a multiple of 8).
  """
  mid_channels: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(self.norm, use_running_average=not train)
    shortcut = x
    mid = self.mid_channels or int(self.in_channels * self.expand_ratio)
    if self.expand_ratio != 1:
      x = self.act(norm(name='bn_pw')(self.conv(mid, 1, 1, name='conv_pw')(x)))
    dw = self.conv(mid, self.kernel_size, self.strides, groups=mid,
                   kernel_init=layers.conv_kernel_init_fan_out(groups=mid), name='conv_dw')
    x = self.act(norm(name='bn_dw')(dw(x)))
    if self.se_layer is not None:
      x = self.se_layer(name='se')(x)
    x = norm(name='bn_pwl')(self.conv(self.out_channels, 1, 1, name='conv_pwl')(x))
    return self.residual(x, shortcut, train)


class FusedMBConv(_InvertedResidual):
  """Fused-MBConv (EfficientNetV2): kxk conv (stride, expand), BN, act -> [SE] -> 1x1 project, BN.

  With expand_ratio 1 the block is [SE ->] a single kxk conv, BN, act (`conv`, `bn`), as in the
  official code (released tables have no SE in fused stages). The residual (with
  stochastic depth) is used when stride is 1 and in == out channels.
  """

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
    return self.residual(x, shortcut, train)


class EfficientNetBase(AttentionFields):
  """An EfficientNet from a block table: stem, MBConv / Fused-MBConv stages, 1x1 head.

  How a variant plugs in: a subclass redeclares field defaults (the block table, BN settings)
  and, where its paper differs, `ROUND_LIMIT` (channel rounding) and `block_reduction` (SE of
  blocks whose string has no `se` ratio). Channels are `width`-scaled, repeats `depth`-scaled
  (or both from `phi` by compound scaling); the stem has `stem_channels` (None: the first
  stage's input width, as in V2).
  Attention fields (`AttentionFields`): `se` on/off, `attn_layer`, `se_stages` (paper stages
  2..; None: all), `se_reduction` (None: 1 / the block strings' se ratio, i.e. 4),
  `se_width_base` ('input': width from the block input channels as released; 'expanded': the
  "wide SE" computed from the expanded channels), `se_width_rule`, `se_squeeze`, `se_gate`,
  `se_act`, `se_bias`.
  """
  ROUND_LIMIT = 0.9  # make_divisible's "never 10% below" (V1); V2 rounds to the nearest
  width: float = 1.0
  depth: float = 1.0
  phi: float | None = None
  num_classes: int = 1000
  blocks: Sequence[str] = B0_BLOCKS
  stem_channels: int | None = None
  head_channels: int = 1280
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.2
  padding: str = 'tf_same'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  act: str = 'swish'
  se_reduction: float | None = None
  se_width_base: str = 'input'
  se_act: str = 'swish'
  conv_impl: str = 'auto'
  conv_policy: ConvPolicy = ConvPolicy()
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_choice('padding', self.padding, layers.PADDING_MODES)
    layers.check_choice('act', self.act, tuple(layers.ACTIVATIONS))
    layers.check_choice('se_width_base', self.se_width_base, ('input', 'expanded'))
    layers.check_choice('conv_impl', self.conv_impl, conv_impls.IMPLS)
    super().__post_init__()

  @nn.nowrap
  def attention_stages(self) -> tuple[int, ...]:
    """Paper stages 2..(1 + number of block strings)."""
    return tuple(range(FIRST_STAGE, FIRST_STAGE + len(self.blocks)))

  @nn.nowrap
  def coefficients(self) -> tuple[float, float]:
    """(width, depth): from `phi` by compound scaling when given, else the fields."""
    if self.phi is not None:
      width, depth, _ = compound_scaling(self.phi)
      return width, depth
    return self.width, self.depth

  @nn.nowrap
  def round_channels(self, channels: float) -> int:
    """`channels` scaled by the width coefficient, rounded to a multiple of 8."""
    return se_lib.make_divisible(channels * self.coefficients()[0], 8,
                                 round_limit=self.ROUND_LIMIT)

  @nn.nowrap
  def stage_args(self) -> list[BlockArgs]:
    """The block table after width/depth scaling."""
    depth = self.coefficients()[1]
    return [dataclasses.replace(
        args, in_channels=self.round_channels(args.in_channels),
        out_channels=self.round_channels(args.out_channels),
        repeats=round_repeats(args.repeats, depth))
            for args in map(decode_block_string, self.blocks)]

  @nn.nowrap
  def layer_constructors(self, train: bool):
    """(act, conv, norm, bn): the activation, the convolution and BatchNorm constructors every
    block receives, and BatchNorm set for `train`."""
    act = layers.get_activation(self.act, 'act')
    conv = base.conv_def(self, padding=self.padding,
                         kernel_init=layers.conv_kernel_init_fan_out())
    norm = functools.partial(nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=jnp.float32)
    return act, conv, norm, functools.partial(norm, use_running_average=not train)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act, conv, norm, bn = self.layer_constructors(train)
    stages = self.stage_args()
    stem = (stages[0].in_channels if self.stem_channels is None
            else self.round_channels(self.stem_channels))
    x = act(bn(name='bn_stem')(conv(stem, 3, 2, name='conv_stem')(x.astype(self.dtype))))
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
    x = conv(self.round_channels(self.head_channels), 1, 1, name='conv_head')(x)
    x = act(bn(name='bn_head')(x))
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier',
                    kernel_init=layers.dense_kernel_init_uniform_fan_out)(x)

  @nn.nowrap
  def block_reduction(self, args: BlockArgs) -> float | None:
    """SE reduction of a block (None: no attention): `se_reduction`, else 1 / the block
    string's se ratio; blocks without one get none."""
    return self.se_reduction or (1.0 / args.se_ratio if args.se_ratio else None)

  @nn.nowrap
  def _attn(self, stage: int, block: int, args: BlockArgs, in_channels: int, conv, norm, train):
    """The block's attention constructor (see `block_reduction`)."""
    reduction = self.block_reduction(args)
    if not reduction:
      return None
    base_width = in_channels if self.se_width_base == 'input' else in_channels * args.expand_ratio
    return self.attn(stage, block, reduction=reduction, width_base=base_width,
                     kernel_init=layers.conv_kernel_init_fan_out(), conv=conv, norm=norm,
                     dtype=self.dtype, train=train)


class EfficientNet(EfficientNetBase):
  """EfficientNet (V1) from block strings, width/depth coefficients (or `phi`) and SE knobs:
  `EfficientNetBase` with B0's table, a 32-channel stem and TF's BN momentum 0.99."""
  blocks: Sequence[str] = B0_BLOCKS
  stem_channels: int | None = 32


for _variant, (_w, _d, _res, _drop) in RELEASED.items():
  register(f'efficientnet_{_variant}', EfficientNet, family='efficientnet', resolution=_res,
           width=_w, depth=_d, dropout_rate=_drop)
# A new family member from compound scaling: create_model('efficientnet', phi=...).
register('efficientnet', EfficientNet, family='efficientnet', phi=0.0, dropout_rate=0.2)
