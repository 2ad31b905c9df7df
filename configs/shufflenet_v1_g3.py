"""shufflenet_v1_g3 on ImageNet: ShuffleNet's recipe (linear decay), as the SE paper trains mobile networks."""
from senet_jax.configs import recipes


def get_config():
  """shufflenet_v1_g3, the baseline without SE (se_shufflenet_v1_g3.py adds it)."""
  return recipes.shufflenet_recipe('shufflenet_v1_g3')
