"""TFDS -> per-process numpy batches, deterministic and resumable at any step.

Design (why): the training order is a pure function of (seed, step). Global example position
q = step * global_batch + process_index * local_batch + j lives in epoch q // N at offset
q % N of that epoch's permutation (seeded by (seed, epoch)). Every random augmentation is
seeded by (seed, q). So restoring the iterator at step k costs nothing (no replay, no shuffle
buffer in the checkpoint; the state is one integer), every process reads disjoint examples, and
the result does not depend on decode parallelism. This needs random access to records: TFDS
`data_source`s over ArrayRecord files (what MaxText uses). Decoding and augmentation run in
`tf.data` with parallel maps.

Evaluation: each process takes a contiguous shard of the split; all processes run the same number
of batches, the missing tail padded and masked (mask 0), so metrics are exact over the split.
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from senet_jax.data import augment, preprocess
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


def _reader(source, num_classes: int, placeholder: bytes, label_key: str = 'label'):
  """numpy function: record indices -> (image bytes, label, ok), labels checked."""
  def read(indices):
    records = source.__getitems__([int(i) for i in indices])
    images, labels, ok = [], [], []
    for i, record in zip(indices, records):
      label = _read_label(record, i, num_classes, label_key)
      data = record['image']
      good = image_is_readable(data)
      images.append(data if good else placeholder)
      labels.append(label)
      ok.append(good)
    ok = np.asarray(ok)
    if not ok.all():
      warn_skipped(np.asarray(indices)[~ok])
    return np.asarray(images, object), np.asarray(labels, np.int32), ok.astype(np.float32)
  return read


def _placeholder_png() -> bytes:
  return tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _read_dataset(index_batches: tf.data.Dataset, source, num_classes, label_key='label'):
  read = _reader(source, num_classes, _placeholder_png(), label_key)

  def fn(positions, indices):
    images, labels, ok = tf.numpy_function(read, [indices],
                                           [tf.string, tf.int32, tf.float32])
    return {'position': positions, 'image': images, 'label': labels, 'mask': ok}
  return index_batches.map(fn).unbatch()


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of epoch `epoch`: a permutation seeded by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_positions(step: int, global_batch: int, process_index: int,
                    process_count: int) -> np.ndarray:
  """Global stream positions of this process's share of the batch of `step`."""
  local = global_batch // process_count
  start = step * global_batch + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


def _train_index_batches(seed, num_examples, start_step, global_batch, pid, pcount):
  cache = {}  # the permutations of the epochs the current batch touches (one or two)

  def gen():
    step = start_step
    while True:
      positions = train_positions(step, global_batch, pid, pcount)
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
      yield positions, indices
      step += 1

  spec = tf.TensorSpec([global_batch // pcount], tf.int64)
  return tf.data.Dataset.from_generator(gen, output_signature=(spec, spec))


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


def _tf_dtype(name: str):
  return {'float32': tf.float32, 'bfloat16': tf.bfloat16}[name]


class TrainIterator:
  """Local training batches for steps start_step, start_step + 1, ...

  Each batch: 'image' (L, H, W, 3) normalised, 'label' (L,) int32 or (L, K) soft labels with
  mixup/cutmix, 'mask' (L,) 1.0 for real examples, 0.0 for skipped undecodable ones.
  `next_step` is the whole iterator state: `TrainIterator(..., start_step=next_step)` resumes.
  """

  def __init__(self, config, source, *, start_step: int = 0, process_index: int = 0,
               process_count: int = 1, device_count: int = 1):
    self.local_batch = check_batch_size(config.batch_size, device_count, process_count)
    self.num_examples = len(source)
    self.next_step = start_step
    self.num_skipped = 0  # undecodable examples delivered (masked) so far
    num_classes = config.num_classes
    ds = _train_index_batches(config.seed, self.num_examples, start_step, config.batch_size,
                              process_index, process_count)
    ds = _read_dataset(ds, source, num_classes)
    ds = ds.map(self._example_fn(config), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(self.local_batch, drop_remainder=True)
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
      ds = ds.map(self._mix_fn(config, num_classes), num_parallel_calls=tf.data.AUTOTUNE)
    self._dataset = ds.prefetch(tf.data.AUTOTUNE)
    self._iter = iter(self._dataset.as_numpy_iterator())

  @staticmethod
  def _example_fn(config):
    area, flip = tuple(config.crop_area_range), config.random_flip

    def fn(example):
      seed = tf.stack([tf.cast(config.seed, tf.int64), example['position']])
      s_crop, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
      image = preprocess.decode_image(example['image'])
      image = preprocess.train_image(image, s_crop, config.image_size, config.interpolation,
                                     area, flip, config.eval_crop_fraction)
      if config.augment != 'none':
        image = tf.cast(tf.round(image), tf.uint8)
        if config.augment == 'autoaugment':
          image = augment.autoaugment(image, s_aug)
        else:
          image = augment.randaugment(image, s_aug, config.randaugment_num_layers,
                                      config.randaugment_magnitude)
        image = tf.cast(image, tf.float32)
      image = preprocess.normalize(image, config.mean_rgb, config.std_rgb,
                                   _tf_dtype(config.input_dtype))
      return {'image': image, 'label': example['label'], 'mask': example['mask'],
              'position': example['position']}
    return fn

  @staticmethod
  def _mix_fn(config, num_classes):
    def fn(batch):
      seed = tf.stack([tf.cast(config.seed, tf.int64) + 1, batch['position'][0]])
      onehot = tf.one_hot(batch['label'], num_classes)
      images, labels = augment.mix_batch(batch['image'], onehot, seed, config.mixup_alpha,
                                         config.cutmix_alpha)
      return {**batch, 'image': images, 'label': labels}
    return fn

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iter)
    self.next_step += 1
    self.num_skipped += int(np.sum(batch['mask'] == 0))
    batch.pop('position')
    return batch


def eval_shard(num_examples: int, process_index: int, process_count: int):
  """[start, end) of this process's contiguous shard of an eval split."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def num_eval_steps(num_examples: int, local_batch: int, process_count: int) -> int:
  """Batches every process runs: enough for the largest shard."""
  return max(1, math.ceil(math.ceil(num_examples / process_count) / local_batch))


def eval_iterator(source, prep: preprocess.Preprocessing, batch_size: int, num_classes: int, *,
                  process_index: int = 0, process_count: int = 1, device_count: int = 1,
                  label_key: str = 'label') -> Iterator[dict[str, np.ndarray]]:
  """Yields padded, masked local eval batches covering this process's shard exactly once.

  `prep`: the eval transform; `batch_size`: the global eval batch (all processes together);
  `label_key`: the int feature 'label', or a sequence feature of classes (ImageNet-ReaL's
  'real_label'), delivered as a (batch, num_classes) multi-hot 'label'.
  """
  local = check_batch_size(batch_size, device_count, process_count, 'eval_batch_size')
  n = len(source)
  start, end = eval_shard(n, process_index, process_count)
  steps = num_eval_steps(n, local, process_count)
  indices = np.full(steps * local, start if end > start else 0, np.int64)
  indices[:end - start] = np.arange(start, end)
  valid = np.zeros(steps * local, np.float32)
  valid[:end - start] = 1.0
  ds = tf.data.Dataset.from_tensor_slices((np.arange(steps * local), indices)).batch(local)
  ds = _read_dataset(ds, source, num_classes, label_key)
  ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(valid)))
  dtype = _tf_dtype(prep.input_dtype)

  def fn(example, is_real):
    image = preprocess.decode_image(example['image'])
    image = preprocess.eval_image(image, prep.image_size, prep.interpolation, prep.crop_fraction)
    image = preprocess.normalize(image, prep.mean_rgb, prep.std_rgb, dtype)
    return {'image': image, 'label': example['label'], 'mask': example['mask'] * is_real}

  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(local).prefetch(tf.data.AUTOTUNE)
  yield from ds.as_numpy_iterator()



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
