"""senet_jax models: `create_model(name, ...)` and `list_models()`.

Importing this package registers every model family.
"""
from senet_jax.models import bn_inception as _bn_inception  # noqa: F401  (registers)
from senet_jax.models import efficientnet as _efficientnet  # noqa: F401  (registers)
from senet_jax.models import efficientnet_v2 as _efficientnet_v2  # noqa: F401  (registers)
from senet_jax.models import inception_resnet as _inception_resnet  # noqa: F401  (registers)
from senet_jax.models import mobilenet as _mobilenet  # noqa: F401  (registers)
from senet_jax.models import resnet_registry as _resnet_registry  # noqa: F401  (registers)
from senet_jax.models import shufflenet as _shufflenet  # noqa: F401  (registers)
from senet_jax.models import vgg as _vgg  # noqa: F401  (registers)
from senet_jax.models.registry import (ModelInfo, create_model, list_models, min_resolution,
                                       model_info)
from senet_jax.models.attention import ATTN_LAYERS, AttentionConfig
from senet_jax.models.squeeze_excite import SqueezeExcite, collect_excitations

__all__ = ['ATTN_LAYERS', 'AttentionConfig', 'ModelInfo', 'SqueezeExcite', 'collect_excitations', 'create_model', 'list_models',
           'min_resolution', 'model_info']
