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

V2 is V1's `EfficientNetBase` with other data: its block tables, nearest-multiple-of-8
rounding (`ROUND_LIMIT = 0`), a stem as wide as the first stage's input, BN momentum 0.9, and
SE only in the stages whose string has an `se` ratio.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.efficientnet import (BlockArgs, EfficientNetBase, FusedMBConv,  # noqa: F401
                                           decode_block_string)
from senet_jax.models.registry import register

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

# V1's BlockArgs carries the 'c1' flag (`fused`); these names are kept for V2 callers.
StageArgs = BlockArgs
decode_v2_block_string = decode_block_string


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """V2 channel rounding: the nearest multiple of 8 (no V1 10% correction)."""
  return se_lib.make_divisible(filters * width, divisor, round_limit=0.0)


class EfficientNetV2(EfficientNetBase):
  """EfficientNetV2 from a block table, width/depth coefficients and SE knobs.

  Attention fields as in V1's `EfficientNet` (`AttentionFields`): `se` on/off, `attn_layer`,
  `se_stages` (stages 2..; None: the stages the table marks 'se', i.e. the MBConv stages; a
  tuple: exactly those stages, fused ones included), `se_reduction` (None: the table's
  1 / 0.25), `se_width_base` ('input' as released, or 'expanded'), `se_width_rule`,
  `se_squeeze`, `se_gate`, `se_act`.
  """
  ROUND_LIMIT = 0.0  # the nearest multiple of 8 (`round_filters`)
  blocks: Sequence[str] = S_BLOCKS
  bn_momentum: float = 0.9

  def __post_init__(self):
    if self.se_reduction is not None and not self.se_reduction >= 1:
      raise ValueError(f'se_reduction must be >= 1, got {self.se_reduction!r}')
    super().__post_init__()

  @nn.nowrap
  def block_reduction(self, args: BlockArgs) -> float | None:
    """SE in the table's MBConv stages (released V2: none in the Fused-MBConv stages) unless
    `se_stages` names stages; `se_reduction`, else 1 / the string's ratio (0.25)."""
    if self.se_stages is None and args.se_ratio is None:
      return None
    return self.se_reduction or 1.0 / (args.se_ratio or 0.25)


for _variant, (_blocks, _w, _d, _train, _eval, _drop) in RELEASED.items():
  register(f'efficientnetv2_{_variant}', EfficientNetV2, family='efficientnet', resolution=_eval,
           blocks=_blocks, width=_w, depth=_d, dropout_rate=_drop)
