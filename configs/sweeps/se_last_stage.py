"""Ablation sweep: SE on all stages vs no SE on the last stage (stages 2-4 only).

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_last_stage.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_last_stage.py:quick --workdir=DIR  # digits
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.se_stages': s} for s in ((2, 3, 4, 5), (2, 3, 4))]
