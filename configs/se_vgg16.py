"""se_vgg16 on ImageNet: the SE paper's SGD recipe (step decay), SE knobs in model_kwargs."""
from senet_jax.configs import recipes


def get_config():
  """se_vgg16; `--config.model_kwargs.se=False` is the same network without SE."""
  return recipes.se_paper('se_vgg16')
