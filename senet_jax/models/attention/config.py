"""The one attention configuration, and the model-field mixin every family inherits.

`AttentionFields` declares the attention knobs once, with one name each across families
(`se`, `attn_layer`, `attn_kwargs`, `se_stages`, `se_reduction`, `se_width_rule`, `se_squeeze`,
`se_gate`, `se_act`, `se_bias`); a family changes a default by redeclaring the field and asks
`self.attn(stage, block, ...)` for the constructor of a block's attention layer.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn

from senet_jax.models import layers
from senet_jax.models import squeeze_excite as se_lib
from senet_jax.models.attention.cbam import CBAM
from senet_jax.models.attention.eca import EfficientChannelAttention
from senet_jax.models.attention.effective_se import EffectiveSE
from senet_jax.models.attention.gather_excite import GatherExcite

# name -> module class; every class takes the input channels from its input tensor.
ATTN_LAYERS = {
    'se': se_lib.SqueezeExcite,
    'ese': EffectiveSE,
    'eca': EfficientChannelAttention,
    'cbam': CBAM,
    'gather_excite': GatherExcite,
}


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Which attention layer a network uses, with its knobs (frozen, hashable).

  Attributes:
    layer: a key of `ATTN_LAYERS` ('se', 'eca', 'cbam', 'gather_excite') or None (no attention).
    reduction: bottleneck ratio r of the layers with an MLP (SE, CBAM, GE with `use_mlp`).
    width_rule: how the bottleneck width is rounded (`squeeze_excite.reduced_width`).
    squeeze, gate, act, bias: SE's squeeze, gate non-linearity, inner activation and FC biases;
      each layer takes the ones it has.
    stages: paper stages that get attention (None: all).
    kwargs: type-specific arguments as sorted (name, value) pairs (a model's `attn_kwargs`).
  """
  layer: str | None = 'se'
  reduction: float = 16
  width_rule: str = 'floor'
  squeeze: str = 'avg'
  gate: str = 'sigmoid'
  act: str = 'relu'
  bias: bool = True
  stages: tuple[int, ...] | None = None
  kwargs: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def create(cls, *, kwargs: Mapping[str, Any] | None = None, stages=None, **fields):
    """Builds a config from plain values (a dict of type-specific args, a list of stages)."""
    return cls(kwargs=tuple(sorted(dict(kwargs or {}).items())),
               stages=None if stages is None else tuple(int(s) for s in stages), **fields)

  def layer_cls(self):
    """The module class of `layer` (None when attention is off)."""
    if self.layer is None:
      return None
    layers.check_choice('attn_layer', self.layer, tuple(ATTN_LAYERS))
    return ATTN_LAYERS[self.layer]

  def validate(self, valid_stages: Sequence[int] | None = None) -> None:
    """Raises ValueError naming the first invalid field (as the model field is spelt)."""
    cls = self.layer_cls()
    se_lib.validate_se_options(squeeze=self.squeeze, gate=self.gate, act=self.act,
                               width_rule=self.width_rule, reduction=self.reduction)
    if valid_stages is not None:
      for stage in self.stages or ():
        layers.check_choice('se_stages (each entry)', stage, tuple(valid_stages))
    if cls is not None:
      unknown = sorted(set(dict(self.kwargs)) - _fields(cls))
      if unknown:
        raise ValueError(f'attn_kwargs {unknown} are not arguments of attn_layer='
                         f'{self.layer!r}; valid: {sorted(_fields(cls))}')

  def make(self, stage: int, block: int, **overrides):
    """The attention constructor of block `block` of paper stage `stage` (call it with `name=`).

    Returns None when attention is off or `stage` is not in `stages`. `overrides` are
    family-specific values (`width_base`, `kernel_init`, `dtype`, a per-block `reduction`);
    each layer receives only the arguments it declares, then `kwargs` on top.
    """
    cls = self.layer_cls()
    if cls is None or (self.stages is not None and stage not in self.stages):
      return None
    shared = dict(reduction=self.reduction, width_rule=self.width_rule, squeeze=self.squeeze,
                  gate=self.gate, act=self.act, use_bias=self.bias,
                  record_name=se_lib.record_name(stage, block))
    shared.update(overrides)
    accepted = _fields(cls)
    kwargs = {k: v for k, v in shared.items() if k in accepted}
    return functools.partial(cls, **{**kwargs, **dict(self.kwargs)})


@functools.lru_cache(maxsize=None)
def _fields(cls) -> frozenset[str]:
  return frozenset(f.name for f in dataclasses.fields(cls)) - {'parent', 'name'}


class AttentionFields(nn.Module):
  """The attention fields of every model family (mixin); see the module docstring.

  `se=False` or `attn_layer=None` removes attention (the paper's baselines); `attn_layer`
  swaps SE for ECA / CBAM / Gather-Excite; `attn_kwargs` passes that layer's own arguments
  (e.g. {'extent': 4} for Gather-Excite).
  """
  se: bool = True
  attn_layer: str | None = 'se'
  attn_kwargs: Mapping[str, Any] | None = None
  se_stages: Sequence[int] | None = None
  se_reduction: float | None = 16
  se_width_rule: str | None = 'floor'
  se_squeeze: str = 'avg'
  se_gate: str = 'sigmoid'
  se_act: str = 'relu'
  se_bias: bool = True

  def __post_init__(self):
    self.attention_config().validate(self.attention_stages())
    super().__post_init__()

  @nn.nowrap
  def attention_stages(self) -> Sequence[int] | None:
    """Valid entries of `se_stages` (None: not checked). Families override this."""
    return None

  @nn.nowrap
  def default_width_rule(self) -> str:
    """The width rule used when `se_width_rule` is None. Families override this."""
    return 'floor'

  @nn.nowrap
  def attention_config(self) -> AttentionConfig:
    """This model's `AttentionConfig` (layer None when `se` is False)."""
    return AttentionConfig.create(
        layer=self.attn_layer if self.se else None,
        reduction=self.se_reduction if self.se_reduction is not None else 1.0,
        width_rule=self.se_width_rule or self.default_width_rule(), squeeze=self.se_squeeze,
        gate=self.se_gate, act=self.se_act, bias=self.se_bias, stages=self.se_stages,
        kwargs=self.attn_kwargs)

  @nn.nowrap
  def attn(self, stage: int, block: int, **overrides):
    """Attention constructor for (stage, block), or None; see `AttentionConfig.make`."""
    return self.attention_config().make(stage, block, **overrides)
