"""How a model family plugs in: the fields and constructors every family shares.

`AttentionFields` (see `attention.config`) holds the attention knobs; `SEModel` adds the fields
of the networks that take SE as a plug-in (VGG, Inception, MobileNet, ShuffleNet): classifier
size, dropout, BN, conv implementation and policy and compute dtype, with `conv_and_norm()`
returning the conv / norm constructors (flax examples' ModuleDefs) and `attn(stage, block)` the
attention one. ResNet and the EfficientNets declare the same conv fields (`conv_impl`: the
requested formulation; `conv_policy`: the `ops.ConvPolicy` that `create_model` /
`builder.build_model` fill in once) and build their conv constructor with `conv_def`.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models.attention.config import AttentionFields
from senet_jax.ops import conv_impls
from senet_jax.ops.policy import ConvPolicy


def conv_def(model, **defaults):
  """The `layers.Conv2d` constructor of `model`: its `conv_impl`, `conv_policy` and `dtype`."""
  return functools.partial(layers.Conv2d, impl=model.conv_impl, policy=model.conv_policy,
                           dtype=model.dtype, **defaults)


class SEModel(AttentionFields):
  """Base of the networks that take SE as a plug-in (VGG, Inception, MobileNet, ShuffleNet).

  Subclasses call `self.attn(stage, block, ...)` where the architecture places an SE block; it
  returns the attention constructor (call it with `name=`) or None when attention is off, and
  build layers from `self.conv_and_norm()`. A subclass changes a default by redeclaring the
  field (MobileNetV3: hard-sigmoid gate, BN eps 1e-3).
  """
  num_classes: int = 1000
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_impl: str = 'auto'
  conv_policy: ConvPolicy = ConvPolicy()
  dtype: Any = jnp.float32

  def __post_init__(self):
    layers.check_choice('conv_impl', self.conv_impl, conv_impls.IMPLS)
    super().__post_init__()

  @nn.nowrap
  def conv_and_norm(self, **conv_defaults):
    """(conv, norm) constructors carrying this model's conv impl, dtype and BN settings."""
    conv = conv_def(self, **conv_defaults)
    norm = functools.partial(nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=jnp.float32)
    return conv, norm

  @nn.nowrap
  def plugin_attn(self, stage: int, block: int, train: bool, **overrides):
    """`attn` with this model's conv / norm constructors, dtype and train flag."""
    conv, norm = self.conv_and_norm()
    return self.attn(stage, block, conv=conv, norm=norm, dtype=self.dtype, train=train,
                     **overrides)
