"""Ablation sweep: Excitation gate: sigmoid, tanh, ReLU.

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_gate.py --workdir=DIR        # ImageNet
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_gate.py:quick --workdir=DIR  # digits
"""
from senet_jax.configs.sweeps import common


def get_config(variant: str = ''):
  """SE-ResNet-50 on ImageNet, or the quick digits stand-in with variant 'quick'."""
  return common.base_config(variant)


def get_sweep(variant: str = ''):
  """The sweep points: {dotted config field: value}."""
  del variant  # the same points for both variants
  return [{'model_kwargs.se_gate': g} for g in ('sigmoid', 'tanh', 'relu')]
