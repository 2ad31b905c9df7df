"""ResNet, ResNeXt, SE-ResNet, SE-ResNeXt and SENet-154 from one stage table.

Two public layouts (reference section 2):
- 'original' (the SE paper's Caffe release, timm `legacy_se*`): the stride of a downsampling
  SE-ResNet bottleneck sits in its first 1x1 conv (in the grouped 3x3 for ResNeXt/SENet-154),
  SE width `C // r`, stem max pool with `ceil_mode=True`.
- 'v1.5' (torchvision, timm `seresnet*`/`seresnext*`): stride in the 3x3 conv, SE width
  `make_divisible(C / r, 8)`, stem max pool padded by 1.

Stems and shortcuts are data too (timm's ResNet-D / -T, "bag of tricks", He et al. 2019):
`stem='deep'` is three 3x3 convs (stem_width / 2, stem_width / 2, stem_width),
`stem='deep_tiered'` narrows the first to 3/8 stem_width; `stem='cifar'` is one 3x3 stride-1
conv and no max pool (He et al. 2016's CIFAR networks: small images keep their resolution);
`avg_down=True` downsamples a projection shortcut by a 2x2 average pool before its stride-1 1x1
conv.

Stages are numbered as in the paper (conv2_x .. conv5_x -> stages 2..5), so the SE block of the
third block of conv4_x records its gates as 'SE_4_3'. Parameter names follow torchvision/timm
(`layer1_0/conv1`, `.../bn1`, `.../se/reduce`) so converted weights map one to one.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models import base
from senet_jax.ops import conv_impls
from senet_jax.ops.policy import ConvPolicy
from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.attention.config import AttentionFields

LAYOUTS = ('original', 'v1.5')
BLOCKS = ('basic', 'bottleneck')
STEMS = ('conv7', 'deep', 'deep_tiered', 'cifar')
FIRST_STAGE = 2  # the paper calls the first residual stage conv2_x


class ResidualUnit(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, grouped 3x3, 1x1) residual unit with optional SE.

  `se_position` places the SE gate: 'standard' relu(x + SE(F(x))), 'pre' relu(x + F(SE(x))),
  'post' SE(relu(x + F(x))), 'identity' relu(SE(x) + F(x)), 'after_3x3' inside F after the
  (last) 3x3 conv's activation.
  """
  kind: str
  width: int          # channels of the (grouped) 3x3 conv
  conv1_width: int    # output channels of the first conv
  out_channels: int
  strides: int = 1
  stride_in_1x1: bool = False
  groups: int = 1
  project: bool = False
  project_kernel: int = 1
  avg_down: bool = False
  se_layer: Callable | None = None
  se_position: str = 'standard'
  drop_path_rate: float = 0.0
  zero_init_last_bn: bool = False
  relu_before_se: bool = False
  conv: Callable = layers.Conv2d
  norm: Callable = nn.BatchNorm
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(self.norm, use_running_average=not train)
    se = self.se_layer
    shortcut = x
    if self.project:
      shortcut = self._shortcut(x, norm)
    if se is not None and self.se_position == 'pre':
      x = se(name='se')(x)
    y = self._branch(x, norm, se)
    if se is not None and self.se_position == 'standard':
      y = se(name='se')(y)
    if se is not None and self.se_position == 'identity':
      shortcut = se(name='se')(shortcut)
    y = layers.DropPath(self.drop_path_rate)(y, deterministic=not train)
    out = self.act(shortcut + y)
    if se is not None and self.se_position == 'post':
      out = se(name='se')(out)
    return out

  def _shortcut(self, x, norm):
    """The projection shortcut: strided conv + BN, or (avg_down) avg pool, 1x1 conv + BN."""
    if not self.avg_down:
      x = self.conv(self.out_channels, self.project_kernel, self.strides,
                    name='downsample_conv')(x)
    else:
      if self.strides > 1:
        x = layers.avg_pool_ceil(x, 2, self.strides)
      x = self.conv(self.out_channels, 1, 1, name='downsample_conv')(x)
    return norm(name='downsample_bn')(x)

  def _branch(self, x, norm, se):
    """F(x): the residual branch, ending with the last BN (no activation)."""
    se_after_3x3 = se if self.se_position == 'after_3x3' else None
    last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    if self.kind == 'basic':
      y = self.act(norm(name='bn1')(self.conv(self.conv1_width, 3, self.strides, name='conv1')(x)))
      if se_after_3x3 is not None:
        y = se_after_3x3(name='se')(y)
      y = self.conv(self.out_channels, 3, 1, groups=self.groups, name='conv2')(y)
      y = norm(name='bn2', scale_init=last_init)(y)
      # timm's legacy SE-ResNet-18/34 weights were trained with a ReLU here (before SE).
      return self.act(y) if self.relu_before_se else y
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.act(norm(name='bn1')(self.conv(self.conv1_width, 1, s1, name='conv1')(x)))
    y = self.conv(self.width, 3, s3, groups=self.groups, name='conv2')(y)
    y = self.act(norm(name='bn2')(y))
    if se_after_3x3 is not None:
      y = se_after_3x3(name='se')(y)
    y = self.conv(self.out_channels, 1, 1, name='conv3')(y)
    return norm(name='bn3', scale_init=last_init)(y)


class ResNet(AttentionFields):
  """ResNet / ResNeXt / SENet family (NHWC images -> logits), see the module docstring.

  `stage_sizes` / `stage_planes` are the stage table (blocks, planes; a bottleneck outputs
  4 * planes and its 3x3 conv has floor(planes * base_width / 64) * groups channels).
  Attention fields (`AttentionFields`): `se` turns attention on (off by default here);
  `attn_layer` picks SE / ECA / CBAM / GE; `se_stages` lists the paper stages (2..5) that get it
  (None: all); `se_width_rule` None means the layout's rule; `se_position` places it in the
  unit (ResidualUnit).
  `stem` ('conv7', 'deep', 'deep_tiered', 'cifar'; `stem_width` output channels) and `avg_down`
  (average-pool projection shortcuts) give the ResNet-D / -T variants (module docstring).
  `basic_relu_before_se` reproduces timm's legacy SE-ResNet-18/34 (a ReLU after the basic
  block's last BN, before SE), which their released weights need.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stage_planes: Sequence[int] = (64, 128, 256, 512)
  block: str = 'bottleneck'
  num_classes: int = 1000
  groups: int = 1
  base_width: int = 64
  reduce_first: int = 1
  stem: str = 'conv7'
  stem_width: int = 64
  project_kernel: int = 1
  avg_down: bool = False
  layout: str = 'original'
  stride_in_1x1: bool | None = None
  se: bool = False
  se_width_rule: str | None = None
  se_position: str = 'standard'
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  zero_init_last_bn: bool = False
  basic_relu_before_se: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_impl: str = 'auto'
  conv_policy: ConvPolicy = ConvPolicy()
  dtype: Any = jnp.float32

  def __post_init__(self):
    self._validate()
    super().__post_init__()

  @nn.nowrap
  def _validate(self) -> None:
    """Raises ValueError naming the first invalid field and its allowed values."""
    layers.check_choice('block', self.block, BLOCKS)
    layers.check_choice('layout', self.layout, LAYOUTS)
    layers.check_choice('stem', self.stem, STEMS)
    layers.check_choice('se_position', self.se_position, se_lib.POSITIONS)
    layers.check_choice('conv_impl', self.conv_impl, conv_impls.IMPLS)
    if len(self.stage_planes) != len(self.stage_sizes):
      raise ValueError(f'stage_planes {tuple(self.stage_planes)} and stage_sizes '
                       f'{tuple(self.stage_sizes)} must have the same length')
    if not 0.0 <= self.dropout_rate < 1.0 or not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError('dropout_rate and drop_path_rate must be in [0, 1)')

  @nn.nowrap
  def attention_stages(self) -> tuple[int, ...]:
    """Paper stages 2..(1 + number of stages)."""
    return tuple(range(FIRST_STAGE, FIRST_STAGE + len(self.stage_sizes)))

  @nn.nowrap
  def default_width_rule(self) -> str:
    """SE width C // r in the Caffe release, make_divisible(C / r, 8) in timm's v1.5."""
    return 'floor' if self.layout == 'original' else 'divisible'

  @nn.nowrap
  def _stride_in_1x1(self) -> bool:
    if self.stride_in_1x1 is not None:
      return self.stride_in_1x1
    # Caffe SE-ResNet strides in the 1x1; its ResNeXt/SENet-154 stride in the grouped 3x3.
    return self.layout == 'original' and self.groups == 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = base.conv_def(self)
    norm = functools.partial(nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=jnp.float32)
    x = self._stem(x.astype(self.dtype), conv, norm, train)
    expansion = 1 if self.block == 'basic' else 4
    in_channels = x.shape[-1]
    total_blocks, block_index = sum(self.stage_sizes), 0
    for s, num_blocks in enumerate(self.stage_sizes):
      stage = FIRST_STAGE + s
      planes = self.stage_planes[s]
      width = int(planes * self.base_width / 64) * self.groups
      out_channels = planes * expansion
      for b in range(num_blocks):
        strides = 2 if (b == 0 and s > 0) else 1
        project = b == 0 and (strides != 1 or in_channels != out_channels)
        x = ResidualUnit(
            kind=self.block, width=width, conv1_width=width // self.reduce_first,
            out_channels=out_channels, strides=strides, stride_in_1x1=self._stride_in_1x1(),
            groups=self.groups, project=project,
            project_kernel=self.project_kernel if s > 0 else 1, avg_down=self.avg_down,
            se_layer=self.attn(stage, b + 1, conv=conv, norm=norm, dtype=self.dtype,
                               train=train), se_position=self.se_position,
            drop_path_rate=self.drop_path_rate * block_index / total_blocks,
            zero_init_last_bn=self.zero_init_last_bn,
            relu_before_se=self.basic_relu_before_se, conv=conv, norm=norm,
            name=f'layer{s + 1}_{b}')(x, train)
        in_channels = out_channels
        block_index += 1
    x = layers.FeatureTap(name='features')(x)
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    head = nn.Dense(self.num_classes, dtype=jnp.float32, name='fc',
                    kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'))
    return head(x)

  def _stem(self, x, conv, norm, train):
    bn = functools.partial(norm, use_running_average=not train)
    if self.stem == 'cifar':  # no downsampling at all: the stages see the input resolution
      return nn.relu(bn(name='bn1')(conv(self.stem_width, 3, 1, name='conv1')(x)))
    if self.stem == 'conv7':
      x = nn.relu(bn(name='bn1')(conv(self.stem_width, 7, 2, name='conv1')(x)))
    else:  # deep: three 3x3 convs, 64-64-128 in SENet-154; tiered: 24-32-64 in timm's '-t'
      half = self.stem_width // 2
      first = 3 * (half // 4) if self.stem == 'deep_tiered' else half
      for i, (ch, st) in enumerate([(first, 2), (half, 1), (self.stem_width, 1)], start=1):
        x = nn.relu(bn(name=f'stem_bn{i}')(conv(ch, 3, st, name=f'stem_conv{i}')(x)))
    if self.layout == 'original':
      return layers.max_pool_ceil(x, 3, 2)
    return layers.max_pool_padded(x, 3, 2)
