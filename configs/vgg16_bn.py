"""vgg16_bn on ImageNet: the SE paper's SGD recipe (step decay), SE knobs in model_kwargs."""
from senet_jax.configs import recipes


def get_config():
  """vgg16_bn, the baseline without SE (se_vgg16.py adds it)."""
  return recipes.se_paper('vgg16_bn')
