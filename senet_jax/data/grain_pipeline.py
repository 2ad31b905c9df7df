"""TFDS -> per-process numpy batches with Grain: pipeline.py's design without TensorFlow.

`config.input_backend='grain'` (the default). The same sources (`sources.open_source`: TFDS
data sources over ArrayRecord, which import no TensorFlow), the same order (`train_positions` /
`example_indices`: a pure function of (seed, step)), the same one-integer state (`next_step`:
`TrainIterator(..., start_step=next_step)` resumes) and the same padded, masked evaluation
layout (`eval_layout`). Decoding and augmentation: image_ops.py (libjpeg-turbo / Pillow
decode, TF-exact numpy resize and crops) and augment_ops.py (AutoAugment / RandAugment / mixup /
cutmix, the ops of augment.py from the shared table). Per-example randomness: a numpy Generator
seeded by (seed, example position) (mixing: (seed + 1, first position of the batch)), as the
tf.data path seeds TF's stateless RNG; the streams differ from TF's, the determinism does not.

Grain: a `MapDataset` over steps (element = one local batch, so worker processes never change
which examples form a batch), read ahead by `num_threads` threads, optionally in `num_workers`
processes (`mp_prefetch`, round-robin: same order). Process sharding is `train_positions`'
(process_index, process_count), as on tf.data: Grain's ShardByJaxProcess would cut the dataset
into contiguous blocks and change the order.
"""
from __future__ import annotations

import os
from typing import Iterator

import grain
import numpy as np

from senet_jax.data import augment_ops, image_ops, sources
from senet_jax.errors import ConfigError

_LAST_STEP = 2 ** 62  # an unbounded stream of steps (a MapDataset needs a length)
_PLACEHOLDER = np.zeros((8, 8, 3), np.uint8)  # undecodable examples (masked out)


def check_interpolation(method: str) -> None:
  """ConfigError naming the field unless this backend reproduces `method`."""
  if method not in image_ops.RESIZE_METHODS:
    raise ConfigError(f"config.interpolation={method!r} is not on input_backend='grain' (it "
                      f"has {list(image_ops.RESIZE_METHODS)}); --config.input_backend=tfdata "
                      f"has every tf.image.resize method")


def _decode(data: bytes | None) -> np.ndarray:
  return _PLACEHOLDER if data is None else image_ops.decode(data)


class _TrainBatch:
  """step -> this process's batch of that step (picklable: runs in Grain's workers)."""

  def __init__(self, config, source, process_index: int, process_count: int):
    self.source, self.pid, self.pcount = source, process_index, process_count
    keys = ('seed', 'batch_size', 'num_classes', 'image_size', 'interpolation', 'random_flip',
            'eval_crop_fraction', 'augment', 'randaugment_num_layers', 'randaugment_magnitude',
            'mixup_alpha', 'cutmix_alpha', 'input_dtype')
    self.c = {k: config[k] for k in keys}
    self.c.update(area=tuple(config.crop_area_range), mean=tuple(config.mean_rgb),
                  std=tuple(config.std_rgb))
    self.num_examples = len(source)
    self._cache = {}  # epoch permutations (one per worker)

  def example(self, data: bytes | None, position: int, out: np.ndarray) -> None:
    """One training image into `out` (float32): seeded by (seed, position), decoded, cropped,
    augmented, normalised."""
    c = self.c
    crop_seed, aug_seed = np.random.SeedSequence([c['seed'], int(position)]).spawn(2)
    image = image_ops.train_image(_decode(data), np.random.default_rng(crop_seed),
                                  c['image_size'], c['interpolation'], c['area'],
                                  c['random_flip'], c['eval_crop_fraction'])
    if c['augment'] != 'none':
      rng = np.random.default_rng(aug_seed)
      image = np.round(image).astype(np.uint8)
      if c['augment'] == 'autoaugment':
        image = augment_ops.autoaugment(image, rng)
      else:
        image = augment_ops.randaugment(image, rng, c['randaugment_num_layers'],
                                        c['randaugment_magnitude'])
    image_ops.normalize(image, c['mean'], c['std'], out=out)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    c = self.c
    positions = sources.train_positions(int(step), c['batch_size'], self.pid, self.pcount)
    indices = sources.example_indices(c['seed'], positions, self.num_examples, self._cache)
    images, labels, mask = sources.read_records(self.source, indices, c['num_classes'])
    size = c['image_size']
    batch = np.empty((len(positions), size, size, 3), np.float32)
    for i, (data, position) in enumerate(zip(images, positions)):
      self.example(data, position, batch[i])
    batch = image_ops.cast(batch, c['input_dtype'])  # then mixed, as augment.mix_batch does
    if c['mixup_alpha'] > 0 or c['cutmix_alpha'] > 0:
      rng = np.random.default_rng([c['seed'] + 1, int(positions[0])])
      onehot = np.eye(c['num_classes'], dtype=np.float32)[labels]
      batch, labels = augment_ops.mix_batch(batch, onehot, rng, c['mixup_alpha'],
                                            c['cutmix_alpha'])
    return {'image': batch, 'label': labels, 'mask': mask}


def _iterate(dataset: grain.MapDataset, num_threads: int | None, num_workers: int):
  threads = num_threads if num_threads is not None else min(os.cpu_count() or 1, 8)
  # Elements are whole batches: a short read-ahead bounds host memory.
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(threads, 1),
                                                 prefetch_buffer_size=max(threads, 2)))
  if num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults suffice)
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(ds)


class TrainIterator(sources.StepStream):
  """Local training batches for steps start_step, start_step + 1, ... (as pipeline.TrainIterator).

  Each batch: 'image' (L, H, W, 3) normalised, 'label' (L,) int32 or (L, K) soft labels with
  mixup/cutmix, 'mask' (L,) 1.0 for real examples, 0.0 for skipped undecodable ones.
  `next_step` is the whole iterator state. `num_threads` (None: the CPU count, at most 8)
  read ahead in this process; `num_workers` > 0 decodes in that many worker processes.
  """

  def __init__(self, config, source, *, start_step: int = 0, process_index: int = 0,
               process_count: int = 1, device_count: int = 1, num_threads: int | None = None,
               num_workers: int = 0):
    check_interpolation(config.interpolation)
    self._start(config.batch_size, len(source), start_step, device_count, process_count)
    fn = _TrainBatch(config, source, process_index, process_count)
    self._iter = _iterate(grain.MapDataset.range(start_step, _LAST_STEP).map(fn),
                          num_threads, num_workers)


class _EvalBatch:
  """eval batch number -> padded, masked batch (picklable)."""

  def __init__(self, source, prep, num_classes, label_key, indices, valid, local):
    self.source, self.prep, self.num_classes, self.label_key = source, prep, num_classes, label_key
    self.indices, self.valid, self.local = indices, valid, local

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    p, sl = self.prep, slice(b * self.local, (b + 1) * self.local)
    images, labels, ok = sources.read_records(self.source, self.indices[sl], self.num_classes,
                                              self.label_key)
    batch = np.empty((len(images), p.image_size, p.image_size, 3), np.float32)
    for i, data in enumerate(images):
      image = image_ops.eval_image(_decode(data), p.image_size, p.interpolation, p.crop_fraction)
      image_ops.normalize(image, p.mean_rgb, p.std_rgb, out=batch[i])
    return {'image': image_ops.cast(batch, p.input_dtype), 'label': labels,
            'mask': ok * self.valid[sl]}


def eval_iterator(source, prep: image_ops.Preprocessing, batch_size: int, num_classes: int, *,
                  process_index: int = 0, process_count: int = 1, device_count: int = 1,
                  label_key: str = 'label', num_threads: int | None = None,
                  num_workers: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Padded, masked local eval batches covering this process's shard exactly once
  (pipeline.eval_iterator's contract: `batch_size` is global, `label_key` 'label' or a
  multi-hot sequence feature)."""
  check_interpolation(prep.interpolation)
  local = sources.check_batch_size(batch_size, device_count, process_count, 'eval_batch_size')
  indices, valid = sources.eval_layout(len(source), local, process_index, process_count)
  fn = _EvalBatch(source, prep, num_classes, label_key, indices, valid, local)
  yield from _iterate(grain.MapDataset.range(len(indices) // local).map(fn), num_threads,
                      num_workers)
