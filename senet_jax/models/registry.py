"""Model registry: every model is a name bound to a module class and its default fields."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from senet_jax.ops.policy import select_conv_policy
from senet_jax.utils.names import suggest


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a config needs to know about a registered model besides its module.

  Attributes:
    name: registered name.
    module_cls: the Flax module class.
    kwargs: fields passed to `module_cls` (overridable in `create_model`).
    resolution: default (training and evaluation) image size.
    dropout_rate: default dropout before the classifier.
    family: 'resnet', 'efficientnet', ... (for docs and configs).
  """
  name: str
  module_cls: Callable[..., nn.Module]
  kwargs: dict[str, Any]
  resolution: int = 224
  dropout_rate: float = 0.0
  family: str = ''


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, module_cls, *, resolution: int = 224, family: str = '',
             **kwargs) -> None:
  """Registers `name` as `module_cls(**kwargs)`; `kwargs['dropout_rate']` is the default."""
  if name in _REGISTRY:
    raise ValueError(f'model {name!r} is registered twice')
  _REGISTRY[name] = ModelInfo(name, module_cls, dict(kwargs), resolution,
                              kwargs.get('dropout_rate', 0.0), family)


def list_models() -> list[str]:
  """Every registered model name, sorted."""
  return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
  """The `ModelInfo` of a registered model; unknown names raise a ValueError listing them all."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}{suggest(name, list_models())} (registered '
                     f'models: {", ".join(list_models())})')
  return _REGISTRY[name]


def min_resolution(model: nn.Module) -> int:
  """Smallest input a model accepts: 32 (five stride-2 stages) unless the module says more."""
  return model.min_resolution() if hasattr(model, 'min_resolution') else 32


def create_model(name: str, *, num_classes: int | None = None, dtype: Any = jnp.float32,
                 features_only: bool = False, out_indices: tuple[int, ...] | None = None,
                 **overrides) -> nn.Module:
  """Builds a registered model (the architecture; weights: `senet_jax.create_model`).

  Args:
    name: a name from `list_models()`.
    num_classes: classifier size (default: 1000).
    dtype: compute dtype (e.g. `jnp.bfloat16`); parameters are always float32.
    features_only: return a feature backbone (`senet_jax.models.features`): a list of feature
      maps at the reductions listed by `feature_info(model)`, timm's semantics.
    out_indices: which feature maps (indices into `feature_info`), default all.
    **overrides: module fields to change, e.g. `se_reduction=8`, `layout='v1.5'`. Without
      a `conv_policy`, the model gets `ops.select_conv_policy()`: the fastest convolution
      formulations for this process's backend and device count, decided here, once.

  Returns:
    A `flax.linen.Module` mapping NHWC float images to `(N, num_classes)` float32 logits via
    `module.apply(variables, images, train=False)`.
  """
  if 'pretrained' in overrides:  # moved above models/ (which never import the converters)
    raise TypeError('senet_jax.models.create_model builds the architecture only; for hub '
                    'weights use senet_jax.create_model(name, pretrained=...)')
  info = model_info(name)
  fields = {f.name for f in dataclasses.fields(info.module_cls)} - {'parent', 'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    hints = ''.join(suggest(u, fields) for u in unknown)
    raise ValueError(f'{name}: unknown model field(s) {unknown}{hints} (valid fields: '
                     f'{sorted(fields)})')
  if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
  kwargs = {**info.kwargs, **overrides, 'num_classes': num_classes or 1000, 'dtype': dtype}
  if 'conv_policy' in fields and 'conv_policy' not in overrides:
    kwargs['conv_policy'] = select_conv_policy()
  module = info.module_cls(**kwargs)
  if features_only or out_indices is not None:
    from senet_jax.models import features
    module = features.features_only(module, out_indices)
  return module
