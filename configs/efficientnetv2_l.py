"""EfficientNetV2-L on ImageNet: paper recipe with progressive learning (configs/recipes.py)."""
from senet_jax.configs import recipes


def get_config():
  """EfficientNetV2-L: 4 progressive stages (paper Table 6), evaluated at the eval size."""
  return recipes.efficientnet_v2('efficientnetv2_l')
