"""`create_model(name, pretrained=...)`: a registered architecture bound to hub weights.

Sits above `senet_jax.models` (pure architecture) and `senet_jax.convert` (weights from other
frameworks): models never import the converters. `senet_jax.create_model` is this function.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from senet_jax.convert import hub
from senet_jax.models import features, registry


def create_model(name: str, *, pretrained: str = '', num_classes: int | None = None,
                 dtype: Any = jnp.float32, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None, **overrides):
  """`senet_jax.models.create_model`, plus `pretrained`: a hub repository, e.g.
  'timm/legacy_seresnet50.in1k' ('@revision' pins one). With it, the module comes bound to the
  converted weights (`module, variables = m.unbind()`; see `senet_jax.convert.hub`); a
  `num_classes` other than the weights' re-initialises the classifier at zero. Without it,
  exactly `senet_jax.models.create_model`."""
  if not pretrained:
    return registry.create_model(name, num_classes=num_classes, dtype=dtype,
                                 features_only=features_only, out_indices=out_indices,
                                 **overrides)
  module = registry.create_model(name, num_classes=num_classes, dtype=dtype, **overrides)
  module = hub.bind_pretrained(module, name, pretrained, overrides, num_classes)
  if features_only or out_indices is not None:
    module = features.features_only(module, out_indices)
  return module
