"""Progressive learning (EfficientNetV2 paper, section 4 / Algorithm 1).

Training is divided into M equal stages. Stage i (0-based) trains at image size S_i with
regularisation Phi_i (dropout, RandAugment magnitude, mixup alpha), each interpolated linearly
from its first-stage value to its last-stage value:

    S_i = S_0 + (S_e - S_0) * i / (M - 1),   Phi_i = Phi_0 + (Phi_e - Phi_0) * i / (M - 1).

How the trainer uses it (why this shape):
- one compiled train step per stage (the input shape and the dropout rate are static), kept in a
  dict for the run and in the persistent XLA compilation cache across restarts;
- the input pipeline is rebuilt at the first step of each stage; its whole state is the step
  number, so a run resumed at any step inside a stage rebuilds that stage's pipeline at that
  step and sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from senet_jax.config import schema
from senet_jax.errors import ConfigError

# The knobs a stage sets, in the config's `progressive` section: (first, last) pairs.
KNOBS = ('image_size', 'dropout_rate', 'randaugment_magnitude', 'mixup_alpha')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: steps [start_step, end_step) and the settings it trains with."""
  index: int
  start_step: int
  end_step: int
  image_size: int
  dropout_rate: float
  randaugment_magnitude: float
  mixup_alpha: float


def _interpolate(first: float, last: float, i: int, num_stages: int) -> float:
  t = 1.0 if num_stages == 1 else i / (num_stages - 1)
  return first * (1.0 - t) + last * t  # exactly `first` and `last` at the ends


def build_schedule(total_steps: int, num_stages: int, image_size: tuple[int, int],
                   dropout_rate: tuple[float, float], randaugment_magnitude: tuple[float, float],
                   mixup_alpha: tuple[float, float], size_multiple: int = 8) -> list[Stage]:
  """The M stages of a `total_steps` run, settings interpolated as in the paper.

  Stage i covers steps [floor(i * T / M), floor((i + 1) * T / M)); a single stage trains with
  the last values. Intermediate image sizes are
  rounded to a multiple of `size_multiple` (the first and last are kept as given).
  """
  if num_stages < 1 or num_stages > total_steps:
    raise ConfigError(f'config.progressive.num_stages={num_stages} must be in [1, total steps '
                     f'({total_steps})]')
  stages = []
  for i in range(num_stages):
    size = _interpolate(*image_size, i, num_stages)
    if 0 < i < num_stages - 1:
      size = round(size / size_multiple) * size_multiple
    stages.append(Stage(
        index=i, start_step=i * total_steps // num_stages,
        end_step=(i + 1) * total_steps // num_stages, image_size=int(size),
        dropout_rate=_interpolate(*dropout_rate, i, num_stages),
        randaugment_magnitude=_interpolate(*randaugment_magnitude, i, num_stages),
        mixup_alpha=_interpolate(*mixup_alpha, i, num_stages)))
  return stages


def check_config(progressive, augment: str, min_size: int) -> None:
  """Raises ConfigError naming the first invalid `config.progressive` field: the section's own
  rules (config/schema.py), then the ones that involve the model and config.augment."""
  problem = schema.problem_of('progressive', progressive)
  if problem:
    raise ConfigError(problem)
  sizes = tuple(progressive.image_size)
  if min(sizes) < min_size:
    raise ConfigError(f'config.progressive.image_size={sizes}: the model needs at least '
                     f'{min_size} px')
  if augment != 'randaugment' and max(progressive.randaugment_magnitude) > 0:
    raise ConfigError(f"config.progressive.randaugment_magnitude is set but config.augment="
                     f"{augment!r}; use augment='randaugment' (or magnitudes (0, 0))")


def schedule_from_config(config, total_steps: int, min_size: int = 32) -> list[Stage] | None:
  """The stages of `config.progressive`, or None when progressive learning is off."""
  progressive = config.get('progressive')
  if progressive is None or progressive.num_stages <= 0:
    return None
  check_config(progressive, config.augment, min_size)
  return build_schedule(total_steps, progressive.num_stages, tuple(progressive.image_size),
                        tuple(progressive.dropout_rate),
                        tuple(progressive.randaugment_magnitude),
                        tuple(progressive.mixup_alpha), progressive.size_multiple)


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage that trains step `step` (0-based: the step about to run)."""
  for stage in stages:
    if step < stage.end_step:
      return stage
  return stages[-1]


def stage_model(model, stage: Stage):
  """The model with the stage's dropout rate (a field of every senet_jax classifier)."""
  if not hasattr(model, 'dropout_rate'):
    raise ConfigError(f'config.progressive: {type(model).__name__} has no dropout_rate field')
  return model.clone(dropout_rate=stage.dropout_rate)


def stage_config(config, stage: Stage):
  """A copy of `config` with the stage's input settings (image size, RandAugment, mixup)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.image_size = stage.image_size
    out.randaugment_magnitude = stage.randaugment_magnitude
    out.mixup_alpha = stage.mixup_alpha
  return out


class StagedIterator:
  """Training batches for steps start_step, start_step + 1, ...: each from its stage's pipeline.

  `make_iterator(stage_config, start_step)` builds a resumable pipeline (e.g.
  `pipeline.TrainIterator`); it is rebuilt when a step crosses into a new stage.
  """

  def __init__(self, stages: list[Stage], config, make_iterator: Callable, start_step: int = 0,
               log: Callable[..., None] | None = None):
    self.stages, self.config, self.next_step = stages, config, start_step
    self._make, self._log = make_iterator, log
    self._stage, self._iter = None, None

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    stage = stage_at(self.stages, self.next_step)
    if stage is not self._stage:
      self._stage = stage
      self._iter = self._make(stage_config(self.config, stage), self.next_step)
      if self._log:
        self._log('progressive stage %d/%d at step %d: image %d, dropout %.3f, RandAugment '
                  'magnitude %.2f, mixup alpha %.3f', stage.index + 1, len(self.stages),
                  self.next_step, stage.image_size, stage.dropout_rate,
                  stage.randaugment_magnitude, stage.mixup_alpha)
    batch = next(self._iter)
    self.next_step += 1
    return batch


class StepPerStage:
  """The compiled train step of each stage, built once on first use and kept.

  `make_step(stage)` returns a jitted step for the stage's settings (e.g. the model cloned with
  the stage's dropout rate); stages with equal settings share one.
  """

  def __init__(self, stages: list[Stage], make_step: Callable[[Stage], Callable]):
    self.stages, self._make, self._compiled = stages, make_step, {}

  def for_step(self, step: int) -> Callable:
    """The train step function for step `step`."""
    stage = stage_at(self.stages, step)
    key = (stage.image_size, stage.dropout_rate, stage.mixup_alpha > 0)
    if key not in self._compiled:
      self._compiled[key] = self._make(stage)
    return self._compiled[key]
