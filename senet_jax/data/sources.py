"""The TFDS-side facts both input backends share, without TensorFlow.

Random-access sources (TFDS `data_source`s over ArrayRecord: `open_source`), the training
order as a pure function of (seed, step) (`epoch_permutation`, `train_positions`,
`example_indices`), record reading with label checks and undecodable-image detection
(`read_records`), and the exact padded evaluation layout (`eval_shard`, `num_eval_steps`,
`eval_layout`) and the iterator state (`StepStream`). pipeline.py (tf.data) and grain_pipeline.py (Grain) both build on them, so the
two backends read the same examples in the same order. tensorflow_datasets' data sources do
not import TensorFlow.
"""
from __future__ import annotations

import io
import logging
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from senet_jax.utils import quiet
from senet_jax.utils.names import suggest

_MAGIC = (b'\xff\xd8', b'\x89PNG', b'GIF8', b'BM')


def open_source(dataset: str, split: str, data_dir: str | None = None):
  """A random-access TFDS data source with undecoded images; builds `senet_digits` offline."""
  if dataset.split('/')[0] == 'senet_digits':
    from senet_jax.data import digits
    resolution = int(dataset.split('/r')[1]) if '/r' in dataset else 32
    builder = digits.build(data_dir, resolution)
  elif dataset == 'senet_fashion_mnist':
    from senet_jax.data import fashion_mnist
    builder = fashion_mnist.open_builder(data_dir)
  else:
    try:
      with quiet.absl_messages(quiet.TFDS_NOT_PREPARED):  # the error below says it
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends (its message is ~9000 chars)
      hint = suggest(dataset.split('/')[0],
                     [*tfds.list_builders(), 'senet_digits', 'senet_fashion_mnist'])
      raise ValueError(f'config.dataset={dataset!r}: not a TFDS dataset{hint} '
                       f'({type(err).__name__})') from None
    with quiet.absl_messages(quiet.TFDS_NOT_PREPARED):
      prepared = builder.is_prepared()
    if not prepared:
      root = os.fspath(builder.data_dir_root)  # config.data_dir, or TFDS's default
      where = (f'config.data_dir={data_dir!r}' if data_dir else
               f"TFDS's default data_dir {root!r} (config.data_dir is not set)")
      raise ValueError(
          f'config.dataset={dataset!r} is not prepared in {where}: no {builder.data_dir}. '
          f'Prepare it first, in ArrayRecord format: `tfds build {dataset} --data_dir={root} '
          f'--file_format=array_record` (ImageNet: add --manual_dir=DIR_WITH_TARS)')
  splits = list(builder.info.splits)
  base_split = split.split('[')[0]
  if base_split not in splits:
    raise ValueError(f'split {split!r} of {dataset!r} does not exist{suggest(base_split, splits)}'
                     f' (splits: {splits})')
  try:
    return builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  except NotImplementedError as err:
    raise ValueError(
        f'{dataset!r} is stored as {builder.info.file_format}; senet_jax reads ArrayRecord '
        f'(random access makes resuming exact). Re-prepare it with '
        f'`tfds build {dataset} --file_format=array_record`') from err


def num_classes_of(dataset_source) -> int | None:
  """Number of classes of a data source's 'label' feature, when it says."""
  feature = dataset_source.dataset_info.features['label']
  return getattr(feature, 'num_classes', None)


def warn_skipped(indices) -> None:
  """Logs examples whose image bytes cannot be decoded (they are masked out, never a crash)."""
  logging.warning('skipping %d undecodable image(s): examples %s', len(indices),
                  [int(i) for i in indices])


def image_is_readable(data: bytes) -> bool:
  """Cheap header check (PIL verify): rejects empty, unknown-format and header-broken files."""
  if not data or not data.startswith(_MAGIC):
    return False
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.verify()
      return 0 < img.width * img.height
  except Exception:  # noqa: BLE001 - any parse error means "skip this example"
    return False


def _read_label(record, index: int, num_classes: int, label_key: str):
  """The int label, or for a sequence feature (ReaL's 'real_label') a multi-hot vector."""
  if label_key == 'label':
    values = label = int(record['label'])
  else:  # a variable-length list of classes, possibly empty
    values = np.asarray(record[label_key], np.int64).reshape(-1)
    label = np.zeros(num_classes, np.int32)
  bad = [int(v) for v in np.atleast_1d(values) if not 0 <= v < num_classes]
  if bad:
    raise ValueError(f'example {int(index)} has {label_key} {bad[0]} outside [0, {num_classes})')
  if label_key != 'label':
    label[values] = 1
  return label


def read_records(source, indices, num_classes: int, label_key: str = 'label'):
  """Records -> (image bytes, or None where undecodable; labels; ok as float32), labels checked."""
  records = source.__getitems__([int(i) for i in indices])
  images, labels, ok = [], [], []
  for i, record in zip(indices, records):
    labels.append(_read_label(record, i, num_classes, label_key))
    data = record['image']
    good = image_is_readable(data)
    images.append(data if good else None)
    ok.append(good)
  ok = np.asarray(ok, bool)
  if not ok.all():
    warn_skipped(np.asarray(indices)[~ok])
  return images, np.asarray(labels, np.int32), ok.astype(np.float32)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of epoch `epoch`: a permutation seeded by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_positions(step: int, global_batch: int, process_index: int,
                    process_count: int) -> np.ndarray:
  """Global stream positions of this process's share of the batch of `step`."""
  local = global_batch // process_count
  start = step * global_batch + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


def example_indices(seed: int, positions: np.ndarray, num_examples: int,
                    cache: dict | None = None) -> np.ndarray:
  """Record indices of global stream positions: offset q % N of epoch q // N's permutation.

  `cache`: {epoch: permutation} kept between calls (the one or two epochs a batch touches).
  """
  cache = {} if cache is None else cache
  epochs = positions // num_examples
  needed = set(np.unique(epochs).tolist())
  for e in set(cache) - needed:
    del cache[e]
  indices = np.empty_like(positions)
  for e in needed:
    if e not in cache:
      cache[e] = epoch_permutation(seed, e, num_examples)
    sel = epochs == e
    indices[sel] = cache[e][positions[sel] % num_examples]
  return indices


def check_batch_size(global_batch: int, device_count: int, process_count: int,
                     field: str = 'batch_size') -> int:
  """Returns the per-process batch; errors name the field when it does not divide evenly."""
  if global_batch <= 0 or global_batch % device_count:
    raise ValueError(f'config.{field}={global_batch} must be a positive multiple of the device '
                     f'count ({device_count}) so every device gets the same share')
  if global_batch % process_count:
    raise ValueError(f'config.{field}={global_batch} must be divisible by the process count '
                     f'({process_count})')
  return global_batch // process_count


def eval_shard(num_examples: int, process_index: int, process_count: int):
  """[start, end) of this process's contiguous shard of an eval split."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def num_eval_steps(num_examples: int, local_batch: int, process_count: int) -> int:
  """Batches every process runs: enough for the largest shard."""
  return max(1, math.ceil(math.ceil(num_examples / process_count) / local_batch))


def eval_layout(num_examples: int, local_batch: int, process_index: int, process_count: int):
  """(record indices, valid) of this process's padded eval stream, num_eval_steps batches long.

  The shard's examples come first, the padding repeats its first example with valid 0.
  """
  start, end = eval_shard(num_examples, process_index, process_count)
  steps = num_eval_steps(num_examples, local_batch, process_count)
  indices = np.full(steps * local_batch, start if end > start else 0, np.int64)
  indices[:end - start] = np.arange(start, end)
  valid = np.zeros(steps * local_batch, np.float32)
  valid[:end - start] = 1.0
  return indices, valid


class StepStream:
  """What both backends' TrainIterator share: the step state and the skipped-example count.

  A subclass sets `_iter` (its backend's batches, 'mask' included) after `_start`; `next_step`
  is the whole iterator state (`TrainIterator(..., start_step=next_step)` resumes).
  """

  def _start(self, global_batch: int, num_examples: int, start_step: int, device_count: int,
             process_count: int) -> None:
    self.local_batch = check_batch_size(global_batch, device_count, process_count)
    self.num_examples = num_examples
    self.next_step = start_step
    self.num_skipped = 0  # undecodable examples delivered (masked) so far

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iter)
    self.next_step += 1
    self.num_skipped += int(np.sum(batch['mask'] == 0))
    return batch


class InMemorySource:
  """A random-access source over a list of {'image': bytes, 'label': int} records.

  Same interface as a TFDS data source (`len`, `__getitems__`); for tests, benchmarks and
  small in-memory datasets.
  """

  def __init__(self, records):
    self.records = list(records)

  def __len__(self) -> int:
    return len(self.records)

  def __getitems__(self, indices):
    return [self.records[i] for i in indices]
