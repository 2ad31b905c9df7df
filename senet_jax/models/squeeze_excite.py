"""The Squeeze-and-Excitation block, with every knob the SE paper ablates as a field.

    z = squeeze(U)                          # (N, C) global average / max pool, or none
    s = gate(W2 . act(W1 . z + b1) + b2)    # W1: C -> C_r, W2: C_r -> C
    out = U * s

The reduced width C_r follows a named rule (`reduced_width`). The gate values `s` are recorded
with `sow` under the block's paper name (`SE_<stage>_<block>`) in the 'intermediates'
collection, so analysis code collects every excitation by name without touching model code.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers

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


def record_name(stage: int, block: int) -> str:
  """The name a block's gate values are recorded under: 'SE_<stage>_<block>' (paper stages)."""
  return f'SE_{stage}_{block}'


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
