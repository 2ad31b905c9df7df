"""Channel / spatial attention as one swappable layer type (timm's `attn_layer`).

Every family asks `AttentionConfig.make(stage, block, ...)` for the attention constructor of a
block; the config holds the knobs shared by all attention types (reduction, width rule, inner
activation, gate, bias) and the type-specific arguments (`kwargs`, from a model's
`attn_kwargs`). Adding an attention type is one new module plus one line in `ATTN_LAYERS` (config.py).
Gate values are recorded under `record_name(stage, block)` ('SE_<stage>_<block>').
"""
from senet_jax.models.attention.cbam import CBAM
from senet_jax.models.attention.config import ATTN_LAYERS, AttentionConfig
from senet_jax.models.attention.eca import EfficientChannelAttention
from senet_jax.models.attention.effective_se import EffectiveSE
from senet_jax.models.attention.gather_excite import GatherExcite
from senet_jax.models.squeeze_excite import SqueezeExcite, collect_excitations, record_name

__all__ = ['ATTN_LAYERS', 'AttentionConfig', 'CBAM', 'EffectiveSE', 'EfficientChannelAttention',
           'GatherExcite', 'SqueezeExcite', 'collect_excitations', 'record_name']
