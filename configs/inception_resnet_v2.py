"""inception_resnet_v2 on ImageNet: the SE paper's SGD recipe (step decay), SE knobs in model_kwargs."""
from senet_jax.configs import recipes


def get_config():
  """inception_resnet_v2, the baseline without SE (se_inception_resnet_v2.py adds it)."""
  return recipes.se_paper('inception_resnet_v2')
