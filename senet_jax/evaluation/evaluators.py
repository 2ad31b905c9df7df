"""Evaluators, big_vision style: a name, a TFDS dataset and split, a preprocessing, a metric set.

The main evaluator (config.dataset / config.eval_split) reports unprefixed metric names (`top1`,
`ema_top1`, ...); every extra evaluator named in `config.evals` prefixes its name (`real_top1`,
`ema_real_top1`, ...) in the returned dict, eval_results.json and TensorBoard.

Each process reads a contiguous shard of the split with the missing tail padded and masked
(data.pipeline.eval_iterator), so every example is counted exactly once on any process count.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Iterable, Sequence

import jax
import numpy as np

from senet_jax.data import pipeline
from senet_jax.data.image_ops import Preprocessing  # noqa: F401 - exported here too
from senet_jax.evaluation import metrics
from senet_jax.training import steps
from senet_jax.errors import ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(_HERE), 'data', 'imagenet_classes.txt')
CLASS_SUBSETS = ('imagenet_a', 'imagenet_r')  # shipped 200-wnid lists (<name>_wnids.txt)
LABEL_KEYS = ('label', 'real_label')


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One evaluator. image_size / crop_fraction 0: the model's own eval preprocessing."""
  name: str
  dataset: str
  split: str
  label_key: str = 'label'   # 'label' (int) or 'real_label' (ReaL's list of correct classes)
  class_subset: str = ''     # '' or one of CLASS_SUBSETS: logits restricted to those classes
  image_size: int = 0
  crop_fraction: float = 0.0
  flip: bool = False         # flip TTA: mean of the probabilities of image and mirror image


# The shipped evaluation sets, as TFDS names them (all in the 1000-class ImageNet label space).
SHIPPED = {
    'imagenet': EvalSpec('imagenet', 'imagenet2012', 'validation'),
    'real': EvalSpec('real', 'imagenet2012_real', 'validation', label_key='real_label'),
    'v2': EvalSpec('v2', 'imagenet_v2/matched-frequency', 'test'),
    'a': EvalSpec('a', 'imagenet_a', 'test', class_subset='imagenet_a'),
    'r': EvalSpec('r', 'imagenet_r', 'test', class_subset='imagenet_r'),
    'sketch': EvalSpec('sketch', 'imagenet_sketch', 'test'),
}


@functools.lru_cache(maxsize=None)
def class_subset_indices(name: str) -> np.ndarray:
  """Indices (1000-class ImageNet order) of a shipped subset's wnids, e.g. ImageNet-R's 200."""
  if name not in CLASS_SUBSETS:
    raise ValueError(f'class subset {name!r} is not shipped; choose one of {CLASS_SUBSETS}')
  with open(IMAGENET_CLASSES_FILE) as f:
    order = {line.split('\t')[0]: i
             for i, line in enumerate(l for l in f if not l.startswith('#'))}
  with open(os.path.join(_HERE, f'{name}_wnids.txt')) as f:
    wnids = [w.strip() for w in f if w.strip() and not w.startswith('#')]
  return np.asarray([order[w] for w in wnids], np.int64)


def _spec_from_definition(name: str, definition) -> EvalSpec:
  fields = {f.name for f in dataclasses.fields(EvalSpec)} - {'name'}
  unknown = set(definition) - fields
  if unknown:
    raise ConfigError(f'config.eval_definitions.{name}: unknown field(s) {sorted(unknown)}; '
                      f'allowed: {sorted(fields)}')
  return EvalSpec(name=name, **dict(definition))


def specs_from_config(config) -> list[EvalSpec]:
  """The main evaluator, then those in config.evals.

  Each entry of the comma-separated config.evals: a shipped name (SHIPPED), a name defined in
  config.eval_definitions, or 'name=dataset:split' (int labels, the model's preprocessing).
  """
  flip = config.get('eval_tta', 'none') == 'flip'
  specs = [EvalSpec('', config.dataset, config.eval_split, flip=flip)]
  definitions = config.get('eval_definitions', None) or {}
  for name in [n.strip() for n in config.get('evals', '').split(',') if n.strip()]:
    if '=' in name:  # 'name=dataset:split' on the command line
      name, _, where = name.partition('=')
      dataset, _, split = where.rpartition(':')
      if not (name and dataset and split):
        raise ConfigError(f"config.evals: {name}={where!r} must read 'name=dataset:split'")
      spec = EvalSpec(name, dataset, split)
    elif name in definitions:
      spec = _spec_from_definition(name, definitions[name])
    elif name in SHIPPED:
      spec = SHIPPED[name]
    else:
      raise ConfigError(f'config.evals: unknown evaluator {name!r}; shipped: {sorted(SHIPPED)}'
                        f', or define it in config.eval_definitions.{name}')
    specs.append(dataclasses.replace(spec, flip=spec.flip or flip))
  check_specs(specs, config.num_classes, config.get('eval_tta', 'none'))
  return specs


def check_specs(specs: Sequence[EvalSpec], num_classes: int, tta: str = 'none') -> None:
  """ConfigError naming the evaluator for a bad label key, class subset or head size."""
  if tta not in ('none', 'flip'):
    raise ConfigError(f"config.eval_tta={tta!r}; allowed: ['none', 'flip']")
  for spec in specs:
    where = f'evaluator {spec.name or "main"!r}'
    if spec.label_key not in LABEL_KEYS:
      raise ConfigError(f'{where}: label_key={spec.label_key!r}; allowed: {list(LABEL_KEYS)}')
    if spec.class_subset and spec.class_subset not in CLASS_SUBSETS:
      raise ConfigError(f'{where}: class_subset={spec.class_subset!r}; allowed: '
                        f'{list(CLASS_SUBSETS)}')
    if spec.class_subset and num_classes != 1000:
      raise ConfigError(f'{where}: class_subset {spec.class_subset!r} needs a 1000-class '
                        f'ImageNet head, the model has {num_classes} classes')


def metric_key(prefix: str, evaluator: str, metric: str) -> str:
  """'top1', 'ema_top1' (main evaluator), 'real_top1', 'ema_real_top1' (named ones)."""
  return f'{prefix}{evaluator + "_" if evaluator else ""}{metric}'


class _FlipTTA:
  """A model whose `apply` returns flip-averaged logits (see metrics.flip_averaged_logits)."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, images, train=False):
    del train  # evaluation only
    return metrics.flip_averaged_logits(
        lambda v, x: self.model.apply(v, x, train=False), variables, images)


Weights = Sequence[tuple[str, object, object]]  # (metric prefix, params, batch_stats)


class Evaluator:
  """One evaluation set with one preprocessing, run on any number of weights."""

  def __init__(self, spec: EvalSpec, model, prep: Preprocessing, num_classes: int,
               batch_size: int, data_dir: str | None = None, source=None,
               out_sharding=None):
    self.spec = spec
    if spec.image_size > 0 or spec.crop_fraction > 0:
      prep = dataclasses.replace(prep, image_size=spec.image_size or prep.image_size,
                                 eval_crop_fraction=spec.crop_fraction or prep.eval_crop_fraction)
    self.prep = prep
    self.source = source if source is not None else pipeline.open_source(
        spec.dataset, spec.split, data_dir)
    self.num_classes, self.batch_size = num_classes, batch_size
    subset = class_subset_indices(spec.class_subset) if spec.class_subset else None

    def outputs_fn(logits, batch):
      return metrics.outputs(logits, batch['label'], batch['mask'], subset)
    step = steps.make_eval_step(_FlipTTA(model) if spec.flip else model, outputs_fn,
                                metrics.SuiteMetrics)
    self.step = jax.jit(step, out_shardings=out_sharding)
    self.images_per_second = float('nan')  # measured by the last totals()

  def batches(self, process_index: int = 0, process_count: int = 1,
              device_count: int = 1) -> Iterable[dict[str, np.ndarray]]:
    """This process's padded, masked local batches."""
    return pipeline.eval_iterator(self.source, self.prep, self.batch_size, self.num_classes,
                                  process_index=process_index, process_count=process_count,
                                  device_count=device_count, label_key=self.spec.label_key)

  def totals(self, weights: Weights, to_global: Callable = lambda b: b,
             process_index: int = 0, process_count: int = 1, device_count: int = 1,
             time_it: bool = False) -> dict[str, metrics.SuiteMetrics]:
    """Unreduced metrics per weights prefix (they merge across processes in tests).

    `time_it`: afterwards also measure `images_per_second` (see _throughput).
    """
    totals, batch = {}, None
    for batch in self.batches(process_index, process_count, device_count):
      batch = to_global(batch)
      for prefix, params, stats in weights:
        m = self.step(params, stats, batch)
        totals[prefix] = m if prefix not in totals else totals[prefix].merge(m)
    if time_it:
      self.images_per_second = self._throughput(weights[0], batch)
    return totals

  def _throughput(self, weights, batch, repeats: int = 10) -> float:
    """Images/s of the compiled step on one resident batch (model speed, not input speed).

    An eval split's few batches are too noisy to time (tf.data warm-up); timm's benchmark
    likewise times the model on a fixed batch. The median call time resists other load on the
    machine. A fixed count: every process makes the same calls (a collective on several hosts).
    """
    _, params, stats = weights
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(self.step(params, stats, batch))
      seconds.append(time.perf_counter() - start)
    return len(batch['mask']) / max(float(np.median(seconds)), 1e-9)

  def run(self, weights: Weights, to_global: Callable = lambda b: b, process_index: int = 0,
          process_count: int = 1, device_count: int = 1) -> dict[str, float]:
    """{metric_key: value} over the whole split for every weights prefix."""
    totals = self.totals(weights, to_global, process_index, process_count, device_count)
    return flatten(totals, self.spec.name)


def flatten(totals: dict[str, metrics.SuiteMetrics], evaluator: str) -> dict[str, float]:
  """Computed metrics with their names (metric_key)."""
  return {metric_key(prefix, evaluator, name): float(value)
          for prefix, m in totals.items() for name, value in m.compute().items()}


def run_all(evaluators: Sequence[Evaluator], weights: Weights, **kwargs) -> dict[str, float]:
  """Every evaluator on every weights; one flat dict of named metrics."""
  results = {}
  for evaluator in evaluators:
    results.update(evaluator.run(weights, **kwargs))
  return results
