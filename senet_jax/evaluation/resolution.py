"""Test-time resolution and crop sweep: one set of weights at several (resolution, crop) pairs.

Networks trained at one resolution often score best at a somewhat larger test resolution
(Touvron et al. 2019, "FixRes"; EfficientNet's train/test sizes), and the best center-crop
fraction moves with it, so both are swept in one pass over the pairs.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from senet_jax.data import image_ops, pipeline
from senet_jax.evaluation.evaluators import EvalSpec, Evaluator, Preprocessing, Weights, flatten


def effective_crop(image_size: int, crop_fraction: float) -> float:
  """The crop fraction actually used (<= 0 means the official res / (res + 32))."""
  if crop_fraction is None or crop_fraction <= 0:
    return image_size / (image_size + image_ops.CROP_PADDING)
  return crop_fraction


def sweep(spec: EvalSpec, model, prep: Preprocessing, weights: Weights,
          resolutions: Sequence[int] = (), crop_fractions: Sequence[float] = (), *,
          num_classes: int, batch_size: int, data_dir: str | None = None, source=None,
          out_sharding=None, **run_kwargs) -> list[dict]:
  """One row per (resolution, crop): image_size, crop_pct, images_per_second and metrics.

  Empty `resolutions` / `crop_fractions` mean the preprocessing's own. `run_kwargs` go to
  Evaluator.totals (to_global and the process layout).
  """
  if source is None:
    source = pipeline.open_source(spec.dataset, spec.split, data_dir)
  rows = []
  for size in resolutions or (prep.image_size,):
    for crop in crop_fractions or (prep.eval_crop_fraction,):
      point = dataclasses.replace(prep, image_size=int(size), eval_crop_fraction=float(crop))
      evaluator = Evaluator(dataclasses.replace(spec, image_size=0, crop_fraction=0.0), model,
                            point, num_classes, batch_size, source=source,
                            out_sharding=out_sharding)
      metrics = flatten(evaluator.totals(weights, time_it=True, **run_kwargs), '')
      rows.append({'image_size': int(size), 'crop_pct': effective_crop(int(size), crop),
                   'images_per_second': evaluator.images_per_second, **metrics})
  return rows


def best(rows: Sequence[dict], key: str = 'top1') -> dict:
  """The row with the highest `key` (the first of equals, i.e. the earliest in sweep order)."""
  return max(rows, key=lambda row: row[key])
