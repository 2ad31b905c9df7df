"""timm (PyTorch) state dicts -> senet_jax variables, without torch.

`from_timm(state_dict, timm_name)` takes {name: numpy array} as read from a timm
`.safetensors` file (`safetensors.numpy.load_file`) and returns `(module, variables)`.
Every timm tensor must land on a model variable of the same shape and every model variable must
be covered; otherwise the error lists all problems at once.
"""
from __future__ import annotations

import re

import numpy as np

from senet_jax.convert import core
from senet_jax.models import create_model, efficientnet, min_resolution, model_info

# timm name -> (senet_jax model, overrides). The layouts are those of reference section 5.
MODELS: dict[str, tuple[str, dict]] = {
    **{f'legacy_seresnet{d}': (f'se_resnet{d}', {}) for d in (50, 101, 152)},
    **{f'legacy_seresnet{d}': (f'se_resnet{d}', {'basic_relu_before_se': True})
       for d in (18, 34)},
    'legacy_seresnext50_32x4d': ('se_resnext50_32x4d', {}),
    'legacy_seresnext101_32x4d': ('se_resnext101_32x4d', {}),
    'legacy_senet154': ('senet154', {}),
    'seresnet50': ('se_resnet50', {'layout': 'v1.5'}),
    'seresnext50_32x4d': ('se_resnext50_32x4d', {'layout': 'v1.5'}),
    'seresnext101_32x4d': ('se_resnext101_32x4d', {'layout': 'v1.5'}),
    **{f'resnet{d}': (f'resnet{d}', {'layout': 'v1.5'}) for d in (18, 34, 50, 101, 152)},
    **{f'tf_efficientnet_b{i}': (f'efficientnet_b{i}', {}) for i in range(9)},
    'tf_efficientnet_l2': ('efficientnet_l2', {}),
    **{f'efficientnet_b{i}': (f'efficientnet_b{i}', dict(efficientnet.TIMM_FLAVOUR))
       for i in range(4)},
    **{f'tf_efficientnetv2_{v}': (f'efficientnetv2_{v}', {})
       for v in ('b0', 'b1', 'b2', 'b3', 's', 'm', 'l', 'xl')},
    'tf_mobilenetv3_large_100': ('mobilenetv3_large_100', {}),
    'tf_mobilenetv3_small_100': ('mobilenetv3_small_100', {}),
    'mobilenetv1_100': ('mobilenet_v1', {'act': 'relu6'}),
    'inception_resnet_v2': ('inception_resnet_v2', {}),
    **{n: (n, {}) for n in ('ecaresnet26t', 'ecaresnet50d', 'ecaresnet50t', 'ecaresnet101d',
                            'ecaresnetlight')},
}

# timm's default pretrained tag of each name: (resolution, crop_pct, interpolation, mean/std).
_HALF = ((127.5,) * 3, (127.5,) * 3)
_PREPROCESSING = {
    'legacy_seresnet18': (224, 0.875, 'bicubic'), 'legacy_senet154': (224, 0.875, 'bilinear'),
    'seresnet50': (224, 0.95, 'bicubic'), 'seresnext50_32x4d': (224, 0.875, 'bicubic'),
    'seresnext101_32x4d': (224, 0.875, 'bicubic'),
    'tf_efficientnet_b0': (224, 0.875, 'bicubic'), 'tf_efficientnet_b1': (240, 0.882, 'bicubic'),
    'tf_efficientnet_b2': (260, 0.89, 'bicubic'), 'tf_efficientnet_b3': (300, 0.904, 'bicubic'),
    'tf_efficientnet_b4': (380, 0.922, 'bicubic'), 'tf_efficientnet_b5': (456, 0.934, 'bicubic'),
    'tf_efficientnet_b6': (528, 0.942, 'bicubic'), 'tf_efficientnet_b7': (600, 0.949, 'bicubic'),
    'tf_efficientnet_b8': (672, 0.954, 'bicubic', _HALF),
    'tf_efficientnet_l2': (475, 0.936, 'bicubic'),
    'tf_efficientnetv2_b0': (224, 0.875, 'bicubic'),
    'tf_efficientnetv2_b1': (240, 0.882, 'bicubic'), 'tf_efficientnetv2_b2': (260, 0.89, 'bicubic'),
    'tf_efficientnetv2_b3': (300, 0.9, 'bicubic', _HALF),
    'tf_efficientnetv2_s': (384, 1.0, 'bicubic', _HALF),
    'tf_efficientnetv2_m': (480, 1.0, 'bicubic', _HALF),
    'tf_efficientnetv2_l': (480, 1.0, 'bicubic', _HALF),
    'tf_efficientnetv2_xl': (512, 1.0, 'bicubic', _HALF),
    'tf_mobilenetv3_large_100': (224, 0.875, 'bilinear', _HALF),
    'tf_mobilenetv3_small_100': (224, 0.875, 'bilinear', _HALF),
    'mobilenetv1_100': (224, 0.875, 'bicubic', _HALF),
    'inception_resnet_v2': (299, 0.8975, 'bicubic', _HALF),
    'efficientnet_b0': (224, 0.875, 'bicubic'), 'efficientnet_b1': (240, 0.9, 'bicubic', _HALF),
    'efficientnet_b2': (256, 0.875, 'bicubic'), 'efficientnet_b3': (288, 0.875, 'bicubic'),
    'ecaresnet26t': (256, 0.875, 'bicubic'), 'ecaresnet50t': (256, 0.875, 'bicubic'),
    'ecaresnet50d': (224, 0.875, 'bicubic'), 'ecaresnet101d': (224, 0.875, 'bicubic'),
    'ecaresnetlight': (224, 0.875, 'bicubic'),
}


def preprocessing(timm_name: str) -> core.Preprocessing:
  """The eval preprocessing of timm's default weights for `timm_name`."""
  if timm_name in _PREPROCESSING:
    entry = _PREPROCESSING[timm_name]
  elif timm_name.startswith('legacy_'):
    entry = (224, 0.875, 'bilinear')
  else:
    entry = (224, 0.95, 'bicubic')  # timm's ResNet "A1" recipe tags
  mean, std = entry[3] if len(entry) > 3 else (core.IMAGENET_MEAN, core.IMAGENET_STD)
  return core.Preprocessing(entry[0], entry[1], entry[2], tuple(mean), tuple(std))


_RESNET_BLOCK = {'se_module.fc1': 'se/reduce', 'se_module.fc2': 'se/expand',
                 'se.fc1': 'se/reduce', 'se.fc2': 'se/expand',
                 'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}
# timm attention layers (`create_attn`) inside a block -> senet_jax.models.attention names.
_ATTENTION = ((r'se\.conv', 'se/conv'), (r'se\.fc', 'se/fc'), (r'se\.(?:channel|mlp)\.fc1', 'se/reduce'),
              (r'se\.(?:channel|mlp)\.fc2', 'se/expand'),
              (r'se\.spatial\.conv\.conv', 'se/spatial_conv'),
              (r'se\.spatial\.conv\.bn', 'se/spatial_bn'),
              (r'se\.gather\.conv(\d+)', r'se/gather_conv\1'),
              (r'se\.gather\.norm(\d+)', r'se/gather_bn\1'))


def _block_part(rest: str) -> str:
  """A ResNet block's sub-module name: the SE / downsample table, then attention layers."""
  if rest in _RESNET_BLOCK:
    return _RESNET_BLOCK[rest]
  for pattern, replacement in _ATTENTION:
    if re.fullmatch(pattern, rest):
      return re.sub(pattern, replacement, rest)
  return rest


_EFF_DS = {'conv_dw': 'conv_dw', 'bn1': 'bn_dw', 'conv_pw': 'conv_pwl', 'bn2': 'bn_pwl'}
_EFF_IR = {'conv_pw': 'conv_pw', 'bn1': 'bn_pw', 'conv_dw': 'conv_dw', 'bn2': 'bn_dw',
           'conv_pwl': 'conv_pwl', 'bn3': 'bn_pwl'}
_EFF_ER = {'conv_exp': 'conv_exp', 'bn1': 'bn_exp', 'conv_pwl': 'conv_pwl',
           'bn2': 'bn_pwl'}  # EdgeResidual = EfficientNetV2's Fused-MBConv
_EFF_TOP = {'conv_stem': 'conv_stem', 'bn1': 'bn_stem', 'conv_head': 'conv_head',
            'bn2': 'bn_head', 'classifier': 'classifier'}


# timm's ResNet-D / -T deep stem: Sequential(conv, bn, act, conv, bn, act, conv) + `bn1`.
_TIMM_DEEP_STEM = {'conv1.0': 'stem_conv1', 'conv1.1': 'stem_bn1', 'conv1.3': 'stem_conv2',
                   'conv1.4': 'stem_bn2', 'conv1.6': 'stem_conv3', 'bn1': 'stem_bn3'}


def _resnet_module(module: str, state_dict: dict) -> str | None:
  """ResNet / SE-ResNet(X) / SENet-154 / ResNet-D; a deep stem (layer0.conv1-3, or timm's
  conv1.0-6 + bn1) maps to stem_conv1-3; an avg_down shortcut (pool, conv, bn) to the
  downsample conv and BN."""
  match = re.fullmatch(r'layer([1-4])\.(\d+)\.(.+)', module)
  if match:
    stage, block, rest = match.groups()
    if f'layer{stage}.{block}.downsample.2.weight' in state_dict:  # avg_down: 0 is the pool
      rest = {'downsample.1': 'downsample.0', 'downsample.2': 'downsample.1'}.get(rest, rest)
    return f'layer{stage}_{block}/{_block_part(rest)}'
  if 'conv1.0.weight' in state_dict:
    return _TIMM_DEEP_STEM.get(module) or {'fc': 'fc'}.get(module)
  match = re.fullmatch(r'(?:layer0\.)?(conv|bn)([123])', module)
  if match:
    kind, i = match.groups()
    deep_stem = 'layer0.conv2.weight' in state_dict
    return f'stem_{kind}{i}' if deep_stem else f'{kind}{i}'
  return {'last_linear': 'fc', 'fc': 'fc'}.get(module)


def _efficientnet_module(module: str, state_dict: dict) -> str | None:
  """EfficientNet V1/V2, MobileNet v1 and MobileNetV3 (timm's EfficientNet/MobileNetV3 classes)."""
  match = re.fullmatch(r'blocks\.(\d+)\.(\d+)\.(.+)', module)
  if match:
    s, b, rest = match.groups()
    if rest.startswith('se.'):
      return f'blocks_{s}_{b}/se/' + {'conv_reduce': 'reduce', 'conv_expand': 'expand'}[rest[3:]]
    if f'blocks.{s}.{b}.conv.weight' in state_dict:  # ConvBnAct ('cn' blocks)
      table = {'conv': 'conv', 'bn1': 'bn'}
    elif f'blocks.{s}.{b}.conv_exp.weight' in state_dict:
      table = _EFF_ER
    elif f'blocks.{s}.{b}.conv_pwl.weight' in state_dict:
      table = _EFF_IR
    else:
      table = _EFF_DS
    return f'blocks_{s}_{b}/{table[rest]}' if rest in table else None
  return _EFF_TOP.get(module)


def _inception_resnet_module(module: str, state_dict: dict) -> str | None:
  """timm Inception-ResNet-v2: 'repeat_1.3.branch1.0.conv' -> 'repeat_1_3/branch1_0/conv'."""
  del state_dict
  parts = module.split('.')
  leaf = [parts.pop()] if parts[-1] in ('conv', 'bn', 'conv2d') and len(parts) > 1 else []
  if parts[0].startswith('repeat') and len(parts) >= 2:
    head, rest = '_'.join(parts[:2]), parts[2:]
  elif parts[0] == 'block8':
    head, rest = 'block8', parts[1:]
  else:
    head, rest = '_'.join(parts), []
  return '/'.join([head] + (['_'.join(rest)] if rest else []) + leaf)


_MODULE_MAPPERS = {'resnet': _resnet_module, 'efficientnet': _efficientnet_module,
                   'mobilenet': _efficientnet_module, 'inception': _inception_resnet_module}
_HEADS = {'resnet': 'fc.weight', 'efficientnet': 'classifier.weight',
          'mobilenet': 'classifier.weight', 'inception': 'classif.weight'}


def convert_tensor(param: str, value: np.ndarray) -> tuple[str, str, np.ndarray] | None:
  """(collection, flax leaf name, array) for one timm parameter name suffix."""
  if param == 'num_batches_tracked':
    return None
  if param == 'weight':
    if value.ndim == 4:
      return 'params', 'kernel', core.torch_conv_to_flax(value)
    if value.ndim == 2:
      return 'params', 'kernel', core.torch_linear_to_flax(value)
    if value.ndim == 3:  # Conv1d (out, in, k) -> flax (k, in, out): ECA's channel conv
      return 'params', 'kernel', np.transpose(value, (2, 1, 0))
    return 'params', 'scale', value
  if param == 'bias':
    return 'params', 'bias', value
  if param in ('running_mean', 'running_var'):
    return 'batch_stats', param[len('running_'):], value
  raise KeyError(param)


def from_timm(state_dict: dict, timm_name: str, **model_overrides):
  """Converts a timm state dict; returns `(module, variables)`.

  The classifier size is read from the weights, so fine-tuned heads (e.g. 10 classes) convert
  too. `model_overrides` change senet_jax model fields (e.g. `stage_sizes` for a timm model
  built with other depths).
  """
  if timm_name not in MODELS:
    raise core.ConversionError(f'unsupported timm model {timm_name!r}; supported: '
                               f'{", ".join(sorted(MODELS))}')
  model_name, overrides = MODELS[timm_name]
  state_dict = core.as_numpy_state_dict(state_dict)
  family = model_info(model_name).family
  head_key = 'last_linear.weight' if timm_name.startswith('legacy_') else _HEADS[family]
  num_classes = state_dict[head_key].shape[0] if head_key in state_dict else 1000
  model = create_model(model_name, num_classes=num_classes, **{**overrides, **model_overrides})
  mapper = _MODULE_MAPPERS[family]
  converted, unexpected, origin = {}, [], {}
  for key, value in state_dict.items():
    module, _, param = key.rpartition('.')
    path = mapper(module, state_dict)
    try:
      leaf = convert_tensor(param, value)
    except KeyError:
      leaf, path = None, None
    if leaf is None and param == 'num_batches_tracked':
      continue
    if path is None or leaf is None:
      unexpected.append(key)
      continue
    collection, name, array = leaf
    converted[(collection, *path.split('/'), name)] = array
    origin[(collection, *path.split('/'), name)] = key
  probe = max(64, min_resolution(model))
  variables = core.check_and_fill(converted, core.abstract_variables(model, probe), unexpected,
                                  f'timm {timm_name}', origin)
  return model, variables
