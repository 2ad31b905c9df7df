"""Shared conversion machinery: tensor layouts, the all-at-once report, checkpoint writing."""
from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.checkpoint import record
# How the source weights expect images: the run record's type.
from senet_jax.checkpoint.record import Preprocessing  # noqa: F401 (re-exported)


class ConversionError(ValueError):
  """Missing, unexpected or mis-shaped tensors, all listed by name."""


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def torch_conv_to_flax(w: np.ndarray) -> np.ndarray:
  """(out, in/groups, kh, kw) -> (kh, kw, in/groups, out)."""
  return np.transpose(w, (2, 3, 1, 0))


def torch_linear_to_flax(w: np.ndarray) -> np.ndarray:
  """(out, in) -> (in, out)."""
  return np.transpose(w, (1, 0))


def unflatten(flat: dict[tuple[str, ...], np.ndarray]) -> dict:
  """{('params', 'conv1', 'kernel'): x} -> nested dicts."""
  return flax.traverse_util.unflatten_dict(flat)


def check_and_fill(converted: dict[tuple[str, ...], np.ndarray], target_abstract: dict,
                   unexpected: list[str], source: str,
                   origin: dict[tuple[str, ...], str] | None = None) -> dict:
  """Compares converted variables with the model's; raises listing every problem at once.

  `origin` maps a converted key to the source tensor name, used when reporting it.
  """
  origin = origin or {}
  target = flax.traverse_util.flatten_dict(target_abstract)
  missing = sorted('/'.join(k) for k in target if k not in converted)
  extra = sorted(origin.get(k, '/'.join(k)) for k in converted if k not in target)
  wrong = sorted(f"{'/'.join(k)}: {tuple(v.shape)} (expected {tuple(target[k].shape)})"
                 for k, v in converted.items() if k in target and v.shape != target[k].shape)
  problems = []
  for title, items in (('missing from the weights', missing),
                       ('not in the model', extra + list(unexpected)),
                       ('shape mismatch', wrong)):
    if items:
      problems.append(f'{title} ({len(items)}): ' + ', '.join(items))
  if problems:
    raise ConversionError(f'cannot convert {source}:\n  ' + '\n  '.join(problems))
  return unflatten({k: np.array(v, dtype=target[k].dtype) for k, v in converted.items()})


HEAD_NAMES = ('classifier', 'fc', 'classif')  # the classifier's name in each model family


def head_name(params: dict) -> str:
  """Name of the classifier among a model's top-level parameters."""
  return next(name for name in HEAD_NAMES if name in params)


def abstract_variables(model, image_size: int = 64) -> dict:
  """The model's variables as ShapeDtypeStructs (no allocation)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, image_size, image_size, 3))))


def reinit_head(variables: dict, model, head: str, image_size: int = 64) -> dict:
  """Replaces the classifier `head` by the fresh initialisation of `model` (re-heading)."""
  fresh = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  params = dict(variables['params'])
  params[head] = jax.device_get(fresh['params'][head])
  return {**variables, 'params': params}


def save_converted(output_dir: str, variables: dict, meta: dict | record.Record) -> str:
  """Writes a checkpoint that `config.init_from` and `main.py --mode=eval` can load.

  `meta` is the run record (a dict in any of its shapes is stored in the current one).
  """
  from senet_jax.training.checkpoint import Checkpointer
  state = {'step': np.zeros([], np.int32), 'params': variables['params'],
           'batch_stats': variables.get('batch_stats', {})}
  ckpt = Checkpointer(os.path.join(output_dir, 'checkpoints'), keep=1, keep_best=False,
                      async_save=False)
  ckpt.save(0, state, record.normalized(meta), force=True)
  ckpt.close()
  return os.path.join(output_dir, 'checkpoints', '0')


def as_numpy_state_dict(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
  """Accepts numpy arrays or torch tensors (anything with .numpy() / __array__)."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, 'detach'):
      v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
    out[k] = np.array(v)  # a copy: never alias the caller's (e.g. torch) buffers
  return out

