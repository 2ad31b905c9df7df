"""Shared base of the SE-paper ablation sweeps.

`base_config('')` is SE-ResNet-50 on ImageNet with the SGD + cosine recipe (the paper's
setting); `base_config('quick')` is a small bottleneck SE-ResNet on the offline digits dataset
that runs a whole sweep on a laptop CPU in minutes. Sweep files add `get_sweep(variant)`: a list
of {dotted config field: value} points.
"""
import ml_collections

from senet_jax.configs import quickstart, recipes


def base_config(variant: str = '') -> ml_collections.ConfigDict:
  """ImageNet SE-ResNet-50 (variant '') or the quick digits stand-in (variant 'quick')."""
  if variant not in ('', 'quick'):
    raise ValueError(f"sweep variant {variant!r}: expected '' or 'quick'")
  if variant == '':
    return recipes.se_resnet('se_resnet50')
  config = quickstart.get_config()
  config.model = 'se_resnet50'
  config.model_kwargs = ml_collections.ConfigDict(dict(
      recipes.SE_RESNET_KNOBS, stage_sizes=(1, 1, 1, 1), stage_planes=(8, 16, 24, 32),
      stem_width=16, layout='original', dropout_rate=0.0))  # floor widths: r matters
  config.num_epochs = 8.0
  config.eval_every_epochs = 0.0
  config.log_every_steps = 100
  return config
