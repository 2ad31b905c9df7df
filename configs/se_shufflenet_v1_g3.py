"""se_shufflenet_v1_g3 on ImageNet: ShuffleNet's recipe (linear decay), as the SE paper trains mobile networks."""
from senet_jax.configs import recipes


def get_config():
  """se_shufflenet_v1_g3 with SE knobs in model_kwargs."""
  return recipes.shufflenet_recipe('se_shufflenet_v1_g3')
