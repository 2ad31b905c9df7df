"""mobilenet_v1 on ImageNet: ShuffleNet's recipe (linear decay), as the SE paper trains mobile networks."""
from senet_jax.configs import recipes


def get_config():
  """mobilenet_v1, the baseline without SE (se_mobilenet_v1.py adds it)."""
  return recipes.shufflenet_recipe('mobilenet_v1')
