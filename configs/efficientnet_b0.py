"""EfficientNet-B0 on ImageNet with the official TPU recipe (see configs/recipes.py)."""
from senet_jax.configs import recipes


def get_config():
  """EfficientNet-B0: its resolution and dropout from the model registry, official recipe."""
  return recipes.efficientnet('efficientnet_b0')
