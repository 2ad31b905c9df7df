"""The Squeeze-and-Excitation block, with every knob the SE paper ablates as a field.

    z = squeeze(U)                          # (N, C) global average / max pool, or none
    s = gate(W2 . act(W1 . z + b1) + b2)    # W1: C -> C_r, W2: C_r -> C
    out = U * s

The reduced width C_r follows a named rule (`reduced_width`). The gate values `s` are recorded
with `sow` under the block's paper name (`SE_<stage>_<block>`) in the 'intermediates'
collection, so analysis code collects every excitation by name without touching model code.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import conv_impls, layers

SQUEEZES = ('avg', 'max', 'none')
GATES = ('sigmoid', 'tanh', 'relu', 'hard_sigmoid')
WIDTH_RULES = ('floor', 'divisible', 'round')
# Where the SE block sits in a residual unit (SE paper, journal version, Fig. 5 and Table 14).
POSITIONS = ('standard', 'pre', 'post', 'identity', 'after_3x3')


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
  """Rounds to a multiple of `divisor`, never going more than 10% below `value` (timm/TF rule)."""
  min_value = min_value or divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < round_limit * value:
    new_value += divisor
  return new_value


def reduced_width(channels: int, reduction: float, rule: str = 'floor', divisor: int = 8) -> int:
  """Width of the SE bottleneck for `channels` inputs and reduction ratio `reduction` (r).

  Rules: 'floor' -> max(1, floor(C / r)) (SENet Caffe release, official EfficientNet);
  'divisible' -> make_divisible(C / r, divisor) (timm's ResNet SE); 'round' -> round(C / r)
  (timm's EfficientNet).
  """
  layers.check_choice('se_width_rule', rule, WIDTH_RULES)
  if reduction <= 0:
    raise ValueError(f'se_reduction must be > 0, got {reduction}')
  value = channels / reduction
  if rule == 'floor':
    return max(1, math.floor(value + 1e-9))
  if rule == 'divisible':
    return make_divisible(value, divisor)
  return max(1, round(value))


def validate_se_options(*, squeeze: str, gate: str, act: str, width_rule: str,
                        reduction: float, prefix: str = 'se_') -> None:
  """Raises ValueError naming the first invalid SE field and its allowed values."""
  layers.check_choice(f'{prefix}squeeze', squeeze, SQUEEZES)
  layers.check_choice(f'{prefix}gate', gate, GATES)
  layers.check_choice(f'{prefix}act', act, tuple(layers.ACTIVATIONS))
  layers.check_choice(f'{prefix}width_rule', width_rule, WIDTH_RULES)
  if not reduction > 0:
    raise ValueError(f'{prefix}reduction must be > 0, got {reduction!r}')


class SqueezeExcite(nn.Module):
  """Squeeze-and-Excitation gate over the channels of an NHWC tensor.

  Attributes:
    reduction: ratio r; the bottleneck has `reduced_width(width_base or C, r, width_rule)` units.
    width_rule: 'floor', 'divisible' or 'round' (see `reduced_width`).
    width_base: channels the bottleneck width is computed from (EfficientNet uses the block
      *input* channels while gating the expanded tensor); None means the gated channels.
    squeeze: 'avg' (paper), 'max', or 'none' (NoSqueeze: the two FCs become 1x1 convolutions
      applied at every position, so the gate has no global context).
    gate: 'sigmoid' (paper), 'tanh', 'relu' or 'hard_sigmoid'.
    act: inner activation ('relu' in the paper, 'swish' in EfficientNet).
    use_bias: FC biases (the Caffe release has them; the journal ablates removing them).
    record_name: name the gate values are sown under ('SE_<stage>_<block>'); None: not recorded.
    dtype: compute dtype. The squeeze is always accumulated in float32.
  """
  reduction: float = 16
  width_rule: str = 'floor'
  width_base: int | None = None
  squeeze: str = 'avg'
  gate: str = 'sigmoid'
  act: str = 'relu'
  use_bias: bool = True
  record_name: str | None = None
  kernel_init: Callable = layers.he_normal_fan_out
  dtype: Any = jnp.float32

  def __post_init__(self):
    validate_se_options(squeeze=self.squeeze, gate=self.gate, act=self.act,
                        width_rule=self.width_rule, reduction=self.reduction)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    width = reduced_width(self.width_base or channels, self.reduction, self.width_rule)
    if self.squeeze == 'avg':
      z = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    elif self.squeeze == 'max':
      z = jnp.max(x, axis=(1, 2), keepdims=True).astype(jnp.float32)
    else:  # 'none': per-position excitation
      z = x
    z = z.astype(self.dtype)
    # 1x1 convs on a (N, 1, 1, C) tensor are the paper's FC layers (and the Caffe release's).
    fc = lambda n, name: nn.Conv(n, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                                 param_dtype=jnp.float32, kernel_init=self.kernel_init, name=name)
    h = layers.get_activation(self.act, 'se_act')(fc(width, 'reduce')(z))
    s = layers.ACTIVATIONS[self.gate](fc(channels, 'expand')(h))
    if self.record_name:
      self.sow('intermediates', self.record_name, s)
    return x * s.astype(x.dtype)


def collect_excitations(intermediates) -> dict[str, jax.Array]:
  """Flattens an 'intermediates' collection into {'SE_<stage>_<block>': gate values}.

  Gate values have shape (N, 1, 1, C) (or (N, H, W, C) for squeeze='none').
  """
  found = {}

  def visit(tree):
    for key, value in tree.items():
      if isinstance(key, str) and key.startswith('SE_') and isinstance(value, tuple):
        found[key] = value[0]
      elif hasattr(value, 'items'):
        visit(value)

  visit(intermediates)
  return dict(sorted(found.items(), key=lambda kv: [int(p) for p in kv[0].split('_')[1:]]))


class SEModel(nn.Module):
  """Base of the networks that take SE as a plug-in (VGG, Inception, MobileNet, ShuffleNet).

  Holds the SE knobs and the fields every such network has (classifier size, dropout, BN,
  conv implementation, compute dtype). Subclasses call `self.se_layer(record_name)` where the
  architecture places an SE block; it returns a `SqueezeExcite` constructor (call it with
  `name=`) or None when `se` is off, and build layers from `self.conv_and_norm()`. A subclass
  changes a default by redeclaring the field (MobileNetV3: hard-sigmoid gate, BN eps 1e-3).
  """
  se: bool = True
  se_reduction: float = 16
  se_width_rule: str = 'floor'
  se_squeeze: str = 'avg'
  se_gate: str = 'sigmoid'
  se_act: str = 'relu'
  se_bias: bool = True
  num_classes: int = 1000
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  def __post_init__(self):
    validate_se_options(squeeze=self.se_squeeze, gate=self.se_gate, act=self.se_act,
                        width_rule=self.se_width_rule, reduction=self.se_reduction)
    layers.check_choice('conv_impl', self.conv_impl, conv_impls.IMPLS)
    super().__post_init__()

  @nn.nowrap
  def conv_and_norm(self, **conv_defaults):
    """(conv, norm) constructors carrying this model's conv impl, dtype and BN settings."""
    conv = functools.partial(layers.Conv2d, impl=self.conv_impl, dtype=self.dtype,
                             **conv_defaults)
    norm = functools.partial(nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=jnp.float32)
    return conv, norm

  @nn.nowrap
  def se_layer(self, record_name: str, width_base: int | None = None):
    """A SqueezeExcite constructor with this model's knobs, or None when `se` is False."""
    if not self.se:
      return None
    return functools.partial(
        SqueezeExcite, reduction=self.se_reduction, width_rule=self.se_width_rule,
        width_base=width_base, squeeze=self.se_squeeze, gate=self.se_gate, act=self.se_act,
        use_bias=self.se_bias, record_name=record_name, dtype=self.dtype)
