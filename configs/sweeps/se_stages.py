"""Ablation sweep: SE in one stage only vs in all stages (paper stages 2..5).

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_stages.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_stages.py:quick --workdir=DIR  # digits
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.se_stages': s} for s in ((2,), (3,), (4,), (5,), (2, 3, 4, 5))]
