"""Ablation sweep: the attention layer of the same backbone: SE, ECA, CBAM, Gather-Excite.

    python -m senet_jax.tools.sweep --config=configs/sweeps/attention.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/attention.py:quick --workdir=DIR  # digits

Every point is SE-ResNet-50's network with its attention swapped (`attn_layer`); the other SE
knobs (reduction 16, ReLU MLP, sigmoid gate) are shared by the layers that have them. The
Gather-Excite point is the paper's parameter-free GE-theta-minus with a global extent.
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.attn_layer': a} for a in ('se', 'eca', 'cbam', 'gather_excite')]
