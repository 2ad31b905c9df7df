"""Feature backbones: `create_model(name, features_only=True, out_indices=...)`.

timm's `features_only` semantics: one feature map per reduction (2, 4, 8, 16, 32), each the
output of the *last* trunk stage at that reduction (e.g. SE-ResNet: stem ReLU, layer1..layer4;
EfficientNet: blocks 0, 1, 2, 4, 6, without the 1x1 head conv), listed with its channels and
reduction in `feature_info`.

Works for every family without changing the model files: the backbone runs unchanged (its
variables are shared, so a classifier checkpoint loads as is) and `nn.intercept_methods` picks
the outputs of its top-level submodules. Which ones is decided once, from shapes: the last
submodule at each reduction, skipping the parallel branches of Inception blocks and the
classifier head. A BatchNorm picked there (a stem) gets the stem activation, as in timm.
Under `jax.jit` the unused classifier is dead code and is not computed.
"""
from __future__ import annotations

import math
import re
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers

PROBE_RESOLUTION = 512  # large enough that VALID-padded stems round to the exact power of two
HEAD_MODULES = ('conv_head',)  # classifier heads: not part of a feature backbone (timm)
_BRANCH = re.compile(r'branch')  # parallel branches of an Inception block, not the trunk


class FeatureInfo(NamedTuple):
  """One output of a feature backbone: its channels, reduction and the module it comes from."""
  module: str
  num_chs: int
  reduction: int


class FeatureBackbone(nn.Module):
  """`backbone` returning the feature maps listed in `feature_info` (a list of NHWC arrays)."""
  backbone: nn.Module
  feature_info: tuple[FeatureInfo, ...]
  stem_act: str = 'relu'

  def setup(self):
    nn.share_scope(self, self.backbone)  # the classifier's variable tree, unchanged

  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    wanted = {info.module for info in self.feature_info}
    depth = len(self.scope.path) + 1
    found: dict[str, Any] = {}

    def tap(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if (context.method_name == '__call__' and len(module.path) == depth
          and module.path[-1] in wanted):
        is_norm = isinstance(module, nn.BatchNorm)
        found[module.path[-1]] = layers.get_activation(self.stem_act)(out) if is_norm else out
      return out

    with nn.intercept_methods(tap):
      self.backbone(x, train=train)
    return [found[info.module] for info in self.feature_info]


def _stem_act(model: nn.Module) -> str:
  act = getattr(model, 'act', 'relu')
  return act if isinstance(act, str) else 'relu'


def _trunk_outputs(model: nn.Module, resolution: int) -> list[tuple[str, tuple[int, ...]]]:
  """(name, output shape) of the model's top-level submodules, in call order (shapes only)."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and len(context.module.path) == 1 and (
        getattr(out, 'ndim', 0) == 4):
      calls.append((context.module.path[0], out.shape, isinstance(context.module, nn.BatchNorm)))
    return out

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))

  jax.eval_shape(init)
  return calls


def all_features(model: nn.Module) -> list[FeatureInfo]:
  """Every feature map a backbone offers, one per reduction, in order."""
  by_reduction: dict[int, FeatureInfo] = {}
  for name, shape, _ in _trunk_outputs(model, PROBE_RESOLUTION):
    if name in HEAD_MODULES:
      break
    if _BRANCH.search(name):
      continue
    reduction = 2 ** round(math.log2(PROBE_RESOLUTION / shape[1]))
    by_reduction[reduction] = FeatureInfo(name, int(shape[-1]), reduction)
  return [by_reduction[r] for r in sorted(by_reduction)]


def features_only(model: nn.Module, out_indices: Sequence[int] | None = None) -> nn.Module:
  """Wraps a classifier (bound or not) as a `FeatureBackbone` with timm's `out_indices`."""
  variables = None
  if model.scope is not None:  # bound to pretrained weights: keep them bound
    model, variables = model.unbind()
  available = all_features(model)
  indices = range(len(available)) if out_indices is None else out_indices
  try:
    info = tuple(available[i] for i in indices)
  except (IndexError, TypeError) as err:
    raise ValueError(f'out_indices={out_indices!r}: this model has {len(available)} feature '
                     f'maps (indices 0..{len(available) - 1}, negative ones count from the '
                     f'end): {[tuple(i) for i in available]}') from err
  wrapped = FeatureBackbone(model, info, _stem_act(model))
  return wrapped.bind(variables) if variables is not None else wrapped
