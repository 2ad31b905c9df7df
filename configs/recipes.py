"""The published training recipes, shared by the per-variant config files.

Sources: the official TPU EfficientNet code (reference section 4) and the common SE-ResNet /
ResNet recipe (SGD + cosine). Each variant file calls one of these with its model name.
"""
import ml_collections

from senet_jax.configs import default
from senet_jax.models import model_info

# SE knobs exposed on the command line for the ResNet family, with the paper's defaults.
# `attn_layer` swaps SE for 'eca' / 'cbam' / 'gather_excite' (senet_jax.models.attention).
SE_RESNET_KNOBS = dict(attn_layer='se', se_reduction=16.0, se_squeeze='avg', se_gate='sigmoid', se_act='relu',
                       se_position='standard', se_stages=(2, 3, 4, 5), se_bias=True,
                       layout='original', basic_relu_before_se=False)
SE_EFFICIENTNET_KNOBS = dict(attn_layer='se', se_squeeze='avg', se_gate='sigmoid', se_act='swish',
                             se_width_base='input', se_stages=(2, 3, 4, 5, 6, 7, 8),
                             drop_path_rate=0.2, padding='tf_same', bn_momentum=0.99,
                             bn_epsilon=1e-3)


def efficientnet(model: str) -> ml_collections.ConfigDict:
  """Official EfficientNet recipe: RMSProp-TF, 0.016 per 256, warmup 5, x0.97 / 2.4 epochs."""
  info = model_info(model)
  config = default.get_config()
  config.model = model
  config.model_kwargs = ml_collections.ConfigDict(
      dict(SE_EFFICIENTNET_KNOBS, dropout_rate=info.dropout_rate))
  config.image_size = info.resolution
  config.dtype = 'bfloat16'
  config.augment = 'autoaugment'
  config.batch_size = 4096
  config.eval_batch_size = 1024
  config.num_epochs = 350.0
  config.optimizer = 'rmsprop_tf'
  config.learning_rate = 0.016
  config.lr_schedule = 'exponential'
  config.warmup_epochs = 5.0
  config.lr_decay_epochs = 2.4
  config.lr_decay_factor = 0.97
  config.momentum = 0.9
  config.rmsprop_decay = 0.9
  config.rmsprop_epsilon = 1e-3
  config.weight_decay = 1e-5
  config.weight_decay_exclude = r'bn[^/]*/(scale|bias)$'  # official: every non-BN variable
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  return config


def se_resnet(model: str, se: bool = True) -> ml_collections.ConfigDict:
  """SE-ResNet / ResNet family: SGD momentum (nesterov), 0.1 per 256, warmup 5, cosine, 100 ep."""
  info = model_info(model)
  config = default.get_config()
  config.model = model
  knobs = dict(SE_RESNET_KNOBS) if se else dict(layout='original')
  knobs['dropout_rate'] = info.dropout_rate
  config.model_kwargs = ml_collections.ConfigDict(knobs)
  config.image_size = info.resolution
  config.dtype = 'bfloat16'
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.num_epochs = 100.0
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 5.0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  return config


SE_PLUGIN_KNOBS = dict(attn_layer='se', se_reduction=16.0, se_squeeze='avg', se_gate='sigmoid', se_act='relu',
                       se_bias=True)


def se_paper(model: str) -> ml_collections.ConfigDict:
  """The SE paper's setup for VGG / BN-Inception / Inception-ResNet-v2 (reference section 2).

  SGD momentum 0.9, batch 1024, lr 0.6 (0.15 per 256) divided by 10 every 30 epochs, 100
  epochs, random-size crops and flips. SE knobs in `model_kwargs` (`se=False`: the baseline).
  """
  info = model_info(model)
  config = se_resnet(model)  # SGD, batch 1024, 100 epochs, bfloat16; then the paper's changes
  knobs = dict(SE_PLUGIN_KNOBS, se=info.kwargs.get('se', True), dropout_rate=info.dropout_rate)
  config.model_kwargs = ml_collections.ConfigDict(knobs)
  config.nesterov = False
  config.learning_rate = 0.15
  config.lr_schedule = 'step'
  config.lr_step_epochs = (30, 60, 90)
  config.warmup_epochs = 0.0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0
  return config


def shufflenet_recipe(model: str) -> ml_collections.ConfigDict:
  """ShuffleNet's recipe, which the SE paper follows for SE-MobileNet / SE-ShuffleNet.

  SGD, batch 1024, lr 0.5 decayed linearly to 0, weight decay 4e-5, 3e5 iterations (~240
  epochs), milder crops (scale 0.25-1) as small networks under-fit rather than over-fit.
  """
  config = se_paper(model)
  config.learning_rate = 0.125
  config.lr_schedule = 'linear'
  config.num_epochs = 240.0
  config.weight_decay = 4e-5
  config.crop_area_range = (0.25, 1.0)
  config.nesterov = True
  return config


def mobilenetv3_recipe(model: str) -> ml_collections.ConfigDict:
  """MobileNetV3 (paper Sec. 6.1): RMSProp momentum 0.9, lr 0.1 at batch 4096, x0.99 every
  3 epochs, weight decay 1e-5, dropout 0.2, EMA 0.9999 -- the EfficientNet machinery."""
  info = model_info(model)
  config = efficientnet(model)
  config.model_kwargs = ml_collections.ConfigDict(dict(
      se=info.kwargs.get('se', True), se_gate='hard_sigmoid', se_act='relu',
      dropout_rate=info.dropout_rate))
  config.augment = 'none'
  config.num_epochs = 350.0
  config.learning_rate = 0.1 * 256 / 4096
  config.lr_decay_epochs = 3.0
  config.lr_decay_factor = 0.99
  config.label_smoothing = 0.0
  return config


# EfficientNetV2 paper, Table 6 (ImageNet progressive learning): (first, last) stage values.
V2_PROGRESSIVE = {
    'efficientnetv2_s': dict(image_size=(128, 300), randaugment_magnitude=(5.0, 15.0),
                             mixup_alpha=(0.0, 0.0), dropout_rate=(0.1, 0.3)),
    'efficientnetv2_m': dict(image_size=(128, 380), randaugment_magnitude=(5.0, 20.0),
                             mixup_alpha=(0.0, 0.2), dropout_rate=(0.1, 0.4)),
    'efficientnetv2_l': dict(image_size=(128, 380), randaugment_magnitude=(5.0, 25.0),
                             mixup_alpha=(0.0, 0.4), dropout_rate=(0.1, 0.5)),
}


def efficientnet_v2(model: str) -> ml_collections.ConfigDict:
  """EfficientNetV2 ImageNet recipe (paper section 5.1 and Table 6).

  V1's RMSProp recipe, 350 epochs in 4 progressive stages, RandAugment, stochastic depth 0.2,
  evaluation at the registered (eval) size. The paper's BN momentum 0.99 is left at the
  model's 0.9, the value of the released code that produced the published weights.
  """
  config = efficientnet(model)
  config.model_kwargs = ml_collections.ConfigDict(dict(
      se_squeeze='avg', se_gate='sigmoid', se_act='swish', se_width_base='input',
      drop_path_rate=0.2, padding='tf_same',
      dropout_rate=V2_PROGRESSIVE[model]['dropout_rate'][1]))
  config.augment = 'randaugment'
  config.randaugment_magnitude = V2_PROGRESSIVE[model]['randaugment_magnitude'][1]
  config.mixup_alpha = V2_PROGRESSIVE[model]['mixup_alpha'][1]
  config.progressive.update(dict(num_stages=4, **V2_PROGRESSIVE[model]))
  return config
