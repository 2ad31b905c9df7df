"""ResNet-50 baseline (no SE) on ImageNet with the same recipe as SE-ResNet-50."""
from senet_jax.configs import recipes


def get_config():
  """ResNet-50, original layout, SGD + cosine."""
  return recipes.se_resnet('resnet50', se=False)
