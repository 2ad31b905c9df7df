"""Rebuild a model, its weights and its preprocessing from a checkpoint directory.

Works for training workdirs (the checkpoint records the config) and converter outputs (the
checkpoint records model, model_kwargs, num_classes and preprocessing).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from senet_jax.models import builder
from senet_jax.training.checkpoint import CheckpointError, load_params

CLASS_NAMES_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'data',
                                'imagenet_classes.txt')


@dataclasses.dataclass
class Loaded:
  """A restored model: module, variables and how to preprocess its inputs."""
  model: Any
  variables: dict
  num_classes: int
  image_size: int
  eval_crop_fraction: float
  interpolation: str
  mean_rgb: tuple
  std_rgb: tuple
  config: dict


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def read_meta(directory: str) -> dict:
  """The JSON record saved with the newest checkpoint under `directory`."""
  for candidate in (os.path.join(directory, 'checkpoints'), directory):
    if os.path.isdir(candidate):
      manager = ocp.CheckpointManager(
          os.path.abspath(candidate), options=ocp.CheckpointManagerOptions(read_only=True),
          item_handlers={'meta': ocp.JsonCheckpointHandler()})
      step = manager.latest_step()
      if step is not None:
        return dict(manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta'])
  raise CheckpointError(f'no checkpoint found under {directory!r}')


def load(directory: str) -> Loaded:
  """Model + float32 variables + preprocessing of the newest checkpoint under `directory`."""
  meta = read_meta(directory)
  if 'config' in meta:  # a training checkpoint
    config = _tuples(json.loads(meta['config']))
    model_name, kwargs, num_classes = config['model'], config['model_kwargs'], config['num_classes']
    conv_impl = config.get('conv_impl', 'auto')
  else:  # a converter output
    config = {}
    model_name, kwargs, num_classes = meta['model'], _tuples(meta['model_kwargs']), meta[
        'num_classes']
    conv_impl = 'auto'
  prep = meta['preprocessing']
  model = builder.build_model(model_name, num_classes=num_classes, conv_impl=conv_impl,
                              model_kwargs=kwargs)
  weights = load_params(directory)
  return Loaded(model, weights, num_classes, prep['image_size'], prep['eval_crop_fraction'],
                prep['interpolation'], tuple(prep['mean_rgb']), tuple(prep['std_rgb']), config)


def class_names(num_classes: int) -> list[str]:
  """ImageNet lemmas for 1000-way heads, else 'class <i>'."""
  if num_classes == 1000:
    with open(CLASS_NAMES_FILE) as f:
      return [line.rstrip('\n').split('\t', 1)[1] for line in f if not line.startswith('#')]
  return [f'class {i}' for i in range(num_classes)]


def preprocess_files(paths: list[str], loaded: Loaded) -> tuple[np.ndarray, np.ndarray]:
  """(normalised batch, uint8 resized crops for display) with the checkpoint's eval transform."""
  import tensorflow as tf
  from senet_jax.data import preprocess
  batch, shown = [], []
  for path in paths:
    with open(path, 'rb') as f:
      image = preprocess.decode_image(tf.constant(f.read()))
    image = preprocess.eval_image(image, loaded.image_size, loaded.interpolation,
                                  loaded.eval_crop_fraction)
    shown.append(np.asarray(tf.cast(tf.round(image), tf.uint8)))
    batch.append(np.asarray(preprocess.normalize(image, loaded.mean_rgb, loaded.std_rgb)))
  return np.stack(batch), np.stack(shown)
