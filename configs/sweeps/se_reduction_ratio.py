"""Ablation sweep: Reduction ratio r (paper Table 10: 4, 8, 16, 32; journal adds 2).

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_reduction_ratio.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_reduction_ratio.py:quick --workdir=DIR  # digits
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.se_reduction': float(r)} for r in (2, 4, 8, 16, 32)]
