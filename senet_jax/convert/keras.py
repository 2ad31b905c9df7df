"""keras.applications EfficientNetB0..B7 / EfficientNetV2* weight files (HDF5) -> senet_jax.

Reads the legacy HDF5 weight format of the files keras.applications downloads
(`efficientnetb0.h5`, ...: root attribute `layer_names`, one group per layer) with h5py: no
Keras and no code execution needed.

Inputs: Keras models contain their own input normalisation (Rescaling(1/255), a Normalization
layer whose mean/variance are stored in the weights file, and, for `weights='imagenet'`, an
extra Rescaling by 1/sqrt(std) that makes the original TF normalisation). senet_jax models take
normalised images, so the converter turns those layers into the `mean_rgb` / `std_rgb` of the
recorded preprocessing: feed `(pixels_0_255 - mean_rgb) / std_rgb` to get Keras' logits.
EfficientNetV2 models normalise with constants (B0-B3: Rescaling(1/255) + ImageNet mean/std;
S/M/L: Rescaling(1/128, offset=-1)), which are not in the weights file.
"""
from __future__ import annotations

import math
import os
import re

import h5py
import numpy as np

from senet_jax.convert import core
from senet_jax.models import create_model, model_info

MODELS = {f'efficientnetb{i}': f'efficientnet_b{i}' for i in range(8)}
V2_MODELS = {f'efficientnetv2{v}': f'efficientnetv2_{v}'
             for v in ('b0', 'b1', 'b2', 'b3', 's', 'm', 'l')}
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_legacy_h5(path: str) -> dict[str, list[np.ndarray]]:
  """{layer name: [weights in Keras order]} from a Keras (2-style) HDF5 weights file.

  Any file that is not one (not HDF5, damaged, missing groups or attributes) is one
  ConversionError naming it; h5py's own messages do not.
  """
  if not os.path.isfile(path):
    raise core.ConversionError(f'--input {path!r} does not exist')
  try:
    f = h5py.File(path, 'r')
  except OSError as err:  # h5py: "Unable to synchronously open file (file signature ...)"
    raise core.ConversionError(f'{path}: not an HDF5 file ({_first_line(err)})') from None
  with f:
    root = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in root.attrs:
      raise core.ConversionError(f'{path}: not a Keras HDF5 weights file (no layer_names)')
    layer = '?'
    try:
      layers = {}
      for layer in map(_text, root.attrs['layer_names']):
        group = root[layer]
        names = [_text(n) for n in group.attrs['weight_names']]
        if names:
          layers[layer] = [np.asarray(group[n]) for n in names]
    except (KeyError, OSError, ValueError, TypeError) as err:  # h5py's errors for damage
      raise core.ConversionError(f'{path}: damaged Keras HDF5 weights file (layer '
                                 f'{layer!r:.100}: {_first_line(err)})') from None
  return layers


def _text(value) -> str:
  """An HDF5 string attribute (bytes or str) as str."""
  return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(err: BaseException) -> str:
  return (str(err).strip("'\"").splitlines() or [type(err).__name__])[0][:200]


def _block_path(stage: str, letter: str) -> str:
  return f'blocks_{int(stage) - 1}_{ord(letter) - ord("a")}'


_BLOCK_LAYERS = {'expand_conv': 'conv_pw', 'expand_bn': 'bn_pw', 'dwconv': 'conv_dw',
                 'bn': 'bn_dw', 'se_reduce': 'se/reduce', 'se_expand': 'se/expand',
                 'project_conv': 'conv_pwl', 'project_bn': 'bn_pwl'}
# EfficientNetV2: MBConv's depthwise conv is 'dwconv2'; a Fused-MBConv's kxk conv is
# 'expand_conv' (then a 1x1 'project_conv'), or 'project_conv' itself when expand_ratio is 1.
_V2_MBCONV = {**_BLOCK_LAYERS, 'dwconv2': 'conv_dw'}
_V2_FUSED = {'expand_conv': 'conv_exp', 'expand_bn': 'bn_exp', 'se_reduce': 'se/reduce',
             'se_expand': 'se/expand', 'project_conv': 'conv_pwl', 'project_bn': 'bn_pwl'}
_V2_FUSED_E1 = {'se_reduce': 'se/reduce', 'se_expand': 'se/expand', 'project_conv': 'conv',
                'project_bn': 'bn'}
_TOP_LAYERS = {'stem_conv': 'conv_stem', 'stem_bn': 'bn_stem', 'top_conv': 'conv_head',
               'top_bn': 'bn_head', 'predictions': 'classifier'}


def _leaves(path: str, weights: list[np.ndarray]):
  """(collection, path..., leaf) -> array for one Keras layer."""
  if path.split('/')[-1].startswith('bn'):
    gamma, beta, mean, var = weights
    keys = path.split('/')
    return {('params', *keys, 'scale'): gamma, ('params', *keys, 'bias'): beta,
            ('batch_stats', *keys, 'mean'): mean, ('batch_stats', *keys, 'var'): var}
  kernel = weights[0]
  if path.endswith('conv_dw'):  # (k, k, C, 1) -> (k, k, 1, C)
    kernel = np.transpose(kernel, (0, 1, 3, 2))
  out = {('params', *path.split('/'), 'kernel'): kernel}
  if len(weights) > 1:
    out[('params', *path.split('/'), 'bias')] = weights[1]
  return out


def _v2_block_table(prefix: str, layers: dict) -> dict[str, str]:
  """Keras -> senet_jax layer names for the V2 block whose layers start with `prefix`."""
  if f'{prefix}dwconv2' in layers:
    return _V2_MBCONV
  return _V2_FUSED if f'{prefix}expand_conv' in layers else _V2_FUSED_E1


def _layer_path(name: str, layers: dict, v2: bool) -> str | None:
  """senet_jax module path of a Keras layer ('block2b_project_bn' -> 'blocks_1_1/bn_pwl')."""
  match = re.fullmatch(r'block(\d)(.)_(.+)', name)
  if match:
    table = _v2_block_table(name[:-len(match.group(3))], layers) if v2 else _BLOCK_LAYERS
    if match.group(3) in table:
      return f'{_block_path(match.group(1), match.group(2))}/{table[match.group(3)]}'
    return None
  return _TOP_LAYERS.get(name)


def from_keras(weights: str | dict, keras_name: str = 'efficientnetb0',
               imagenet_rescaling: bool = True):
  """Converts keras.applications EfficientNet weights; returns (module, variables, prep).

  Args:
    weights: path of the .h5 file, or {layer name: [arrays]}.
    keras_name: 'efficientnetb0' ... 'efficientnetb7', 'efficientnetv2b0' ... 'efficientnetv2l'.
    imagenet_rescaling: the Keras V1 model was built with weights='imagenet' (extra
      1/sqrt(std) input rescaling); False for a model built with weights=None. Unused for V2.
  """
  supported = {**MODELS, **V2_MODELS}
  if keras_name not in supported:
    raise core.ConversionError(f'unsupported Keras model {keras_name!r}; supported: '
                               f'{sorted(supported)}')
  v2 = keras_name in V2_MODELS
  layers = read_legacy_h5(weights) if isinstance(weights, str) else dict(weights)
  converted, unexpected, norm = {}, [], None
  for name, arrays in layers.items():
    path = _layer_path(name, layers, v2)
    if path is None:
      if name.startswith('normalization'):
        norm = arrays
      else:
        unexpected.append(name)
      continue
    try:
      converted.update(_leaves(path, arrays))
    except (ValueError, IndexError):  # a BN without 4 arrays, a depthwise kernel not 4-D
      source = weights if isinstance(weights, str) else f'Keras {keras_name}'
      raise core.ConversionError(
          f'{source}: layer {name!r:.100} holds {len(arrays)} arrays of shapes '
          f'{[np.shape(a) for a in arrays]}, not the weights of a {path.split("/")[-1]} '
          f'layer') from None
  num_classes = converted[('params', 'classifier', 'kernel')].shape[1] if (
      ('params', 'classifier', 'kernel') in converted) else 1000
  model = create_model(supported[keras_name], num_classes=num_classes)
  variables = core.check_and_fill(converted, core.abstract_variables(model), unexpected,
                                  f'Keras {keras_name}')
  if v2:
    return model, variables, v2_input_preprocessing(supported[keras_name])
  return model, variables, input_preprocessing(norm, MODELS[keras_name], imagenet_rescaling)


def input_preprocessing(norm, model_name: str, imagenet_rescaling: bool) -> core.Preprocessing:
  """mean/std on the 0..255 scale equivalent to Keras' Rescaling + Normalization layers."""
  mean = np.zeros(3) if norm is None else np.reshape(norm[0], -1)[:3]
  var = np.ones(3) if norm is None else np.reshape(norm[1], -1)[:3]
  extra = np.asarray([1 / math.sqrt(s) for s in IMAGENET_STD]) if imagenet_rescaling else 1.0
  std = 255.0 * np.sqrt(var) / extra
  resolution = model_info(model_name).resolution
  return core.Preprocessing(resolution, resolution / (resolution + 32), 'bicubic',
                            tuple(float(v) for v in 255.0 * mean), tuple(float(v) for v in std))


def v2_input_preprocessing(model_name: str) -> core.Preprocessing:
  """mean/std on the 0..255 scale of Keras EfficientNetV2's built-in input layers."""
  resolution = model_info(model_name).resolution
  if model_name.split('_')[-1].startswith('b'):  # Rescaling(1/255) + ImageNet Normalization
    mean, std = core.IMAGENET_MEAN, core.IMAGENET_STD
  else:  # Rescaling(scale=1/128, offset=-1)
    mean, std = (128.0,) * 3, (128.0,) * 3
  return core.Preprocessing(resolution, resolution / (resolution + 32), 'bicubic',
                            tuple(mean), tuple(std))
