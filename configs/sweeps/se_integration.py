"""Ablation sweep: Integration: standard, SE-PRE, SE-POST, SE-Identity, SE after the 3x3 conv.

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_integration.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_integration.py:quick --workdir=DIR  # digits
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.se_position': p} for p in ('standard', 'pre', 'post', 'identity', 'after_3x3')]
