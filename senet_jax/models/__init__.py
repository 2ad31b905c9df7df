"""senet_jax models: `create_model(name, ...)` and `list_models()`.

Importing this package imports every module in it, and so registers every model family: a new
family is one new module here, with its `register(...)` lines at the bottom.
"""
import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):
  if not _module.ispkg:
    _importlib.import_module(f'{__name__}.{_module.name}')

from senet_jax.models.registry import (ModelInfo, create_model, list_models,  # noqa: E402
                                       min_resolution, model_info)
from senet_jax.models.attention import ATTN_LAYERS, AttentionConfig  # noqa: E402
from senet_jax.models.squeeze_excite import SqueezeExcite, collect_excitations  # noqa: E402

__all__ = ['ATTN_LAYERS', 'AttentionConfig', 'ModelInfo', 'SqueezeExcite', 'collect_excitations',
           'create_model', 'list_models', 'min_resolution', 'model_info']
