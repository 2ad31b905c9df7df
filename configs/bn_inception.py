"""bn_inception on ImageNet: the SE paper's SGD recipe (step decay), SE knobs in model_kwargs."""
from senet_jax.configs import recipes


def get_config():
  """bn_inception, the baseline without SE (se_bn_inception.py adds it)."""
  return recipes.se_paper('bn_inception')
