"""ecaresnet50d (timm's ECA-ResNet-50-D) on ImageNet: the SGD + cosine ResNet recipe."""
from senet_jax.configs import recipes


def get_config():
  """ecaresnet50d: the ResNet recipe's knobs, set to the registered architecture (ECA in every
  stage, torchvision layout; the deep stem and avg-pool shortcuts are the model's defaults)."""
  config = recipes.se_resnet('ecaresnet50d')
  config.model_kwargs.update(dict(attn_layer='eca', layout='v1.5'))
  return config
