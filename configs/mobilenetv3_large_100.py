"""mobilenetv3_large_100 on ImageNet: the MobileNetV3 paper's RMSProp recipe."""
from senet_jax.configs import recipes


def get_config():
  """mobilenetv3_large_100; `--config.model_kwargs.se=False` removes every SE block."""
  return recipes.mobilenetv3_recipe('mobilenetv3_large_100')
