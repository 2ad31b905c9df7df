"""se_resnet152 on ImageNet: SGD + cosine recipe with the SE paper's knobs exposed."""
from senet_jax.configs import recipes


def get_config():
  """se_resnet152 with SE knobs in config.model_kwargs (override on the command line)."""
  return recipes.se_resnet('se_resnet152')
