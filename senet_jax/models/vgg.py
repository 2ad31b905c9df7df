"""VGG with BatchNorm (the SE paper's VGG-16 baseline) and SE-VGG.

The SE paper (TPAMI version, Sec. 4) integrates SE into VGGNet "by insertion after the
non-linearity following each convolution", and trains VGG-16 and SE-VGG-16 with BatchNorm after
each convolution (Table 2 note). That is the default `se_placement='every_conv'`;
`'stage_end'` puts one SE block after the last conv of each stage only (a common variant).

Layout as torchvision's `vgg16_bn`: 3x3 convs with bias, BN, ReLU; 2x2 max pools; adaptive
average pool to 7x7; 4096-4096-classes classifier with dropout. SE gates are recorded as
'SE_<stage>_<conv>' (stage 1..5, conv index within the stage).

The same network with `kernel_size`, `batch_norm=False` and `num_hidden` is also the small
CNN of the Fashion-MNIST authors' benchmark (`tf_tutorial_convnet`: zalandoresearch/fashion-mnist
`benchmark/convnet.py`, TensorFlow's layers tutorial): two 5x5 convs of 32 and 64 channels with
bias and ReLU, each followed by a 2x2 max pool, one hidden layer of 1024 with dropout 0.4.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models.base import SEModel
from senet_jax.models.registry import register

VGG_STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
              19: (2, 2, 4, 4, 4)}
PLACEMENTS = ('every_conv', 'stage_end')


class VGG(SEModel):
  """VGG-BN / SE-VGG: `stage_sizes` convs per stage of `stage_widths` channels, then the MLP.

  SE fields (see `SEModel`): on by default; `se_placement` 'every_conv' (paper) or 'stage_end'.
  """
  stage_sizes: Sequence[int] = VGG_STAGES[16]
  stage_widths: Sequence[int] = (64, 128, 256, 512, 512)
  hidden_width: int = 4096
  pool_size: int = 7
  dropout_rate: float = 0.5
  se_placement: str = 'every_conv'
  kernel_size: int = 3
  batch_norm: bool = True
  num_hidden: int = 2

  def __post_init__(self):
    layers.check_choice('se_placement', self.se_placement, PLACEMENTS)
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError(f'stage_sizes {tuple(self.stage_sizes)} and stage_widths '
                       f'{tuple(self.stage_widths)} must have the same length')
    if self.num_hidden not in (0, 1, 2):
      raise ValueError(f'num_hidden {self.num_hidden}: expected 0, 1 or 2 hidden layers')
    super().__post_init__()

  @nn.nowrap
  def min_resolution(self) -> int:
    """Smallest input size: one pixel left after the stages' 2x2 pools."""
    return 2 ** len(self.stage_sizes)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = self.conv_and_norm()
    x = x.astype(self.dtype)
    for s, (num_convs, width) in enumerate(zip(self.stage_sizes, self.stage_widths), start=1):
      for i in range(1, num_convs + 1):
        name = f'conv{s}_{i}'
        if self.batch_norm:
          x = layers.ConvBNAct(width, self.kernel_size, use_bias=True, conv=conv, norm=norm,
                               name=name)(x, train)
        else:
          x = nn.relu(conv(width, self.kernel_size, 1, padding='symmetric', use_bias=True,
                           name=name)(x))
        if self.se_placement == 'every_conv' or i == num_convs:
          se = self.plugin_attn(s, i, train)
          x = x if se is None else se(name=f'se{s}_{i}')(x)
      x = layers.max_pool(x, 2, 2, ((0, 0), (0, 0)))
    x = layers.FeatureTap(name='features')(x)
    x = layers.adaptive_avg_pool(x, self.pool_size)
    # Flatten in PyTorch's (C, H, W) order so the classifier's rows line up with torchvision.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1).astype(jnp.float32)
    for name in ('fc6', 'fc7')[:self.num_hidden]:
      x = nn.relu(nn.Dense(self.hidden_width, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier')(x)


for _depth, _stages in VGG_STAGES.items():
  register(f'vgg{_depth}_bn', VGG, family='vgg', stage_sizes=_stages, se=False,
           dropout_rate=0.5)
  register(f'se_vgg{_depth}', VGG, family='vgg', stage_sizes=_stages, se=True,
           dropout_rate=0.5)
register('tf_tutorial_convnet', VGG, family='vgg', resolution=28, stage_sizes=(1, 1),
         stage_widths=(32, 64), kernel_size=5, batch_norm=False, hidden_width=1024,
         num_hidden=1, dropout_rate=0.4, se=False)
