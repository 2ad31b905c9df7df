"""The tf.data backend of pipeline.py (config.input_backend='tfdata'): TensorFlow decodes and
augments (preprocess.py, augment.py) with parallel maps; record order, process shares, resume
state and the eval layout come from sources.py, as for the Grain backend. Imported only when a
tf.data iterator is built (pipeline.py routes), so a Grain run never loads TensorFlow.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from senet_jax.data import augment, preprocess
from senet_jax.data.sources import (StepStream, check_batch_size, eval_layout,
                                    example_indices, read_records, train_positions)


def _reader(source, num_classes: int, placeholder: bytes, label_key: str = 'label'):
  """numpy function: record indices -> (image bytes, label, ok), labels checked."""
  def read(indices):
    images, labels, ok = read_records(source, indices, num_classes, label_key)
    images = [placeholder if data is None else data for data in images]
    return np.asarray(images, object), labels, ok
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


def _train_index_batches(seed, num_examples, start_step, global_batch, pid, pcount):
  cache = {}  # the permutations of the epochs the current batch touches (one or two)

  def gen():
    step = start_step
    while True:
      positions = train_positions(step, global_batch, pid, pcount)
      yield positions, example_indices(seed, positions, num_examples, cache)
      step += 1

  spec = tf.TensorSpec([global_batch // pcount], tf.int64)
  return tf.data.Dataset.from_generator(gen, output_signature=(spec, spec))


def _drop_position(batch: dict) -> dict:
  """The stream position keyed each example's seeds; training batches do not carry it."""
  batch.pop('position')
  return batch


def _tf_dtype(name: str):
  return {'float32': tf.float32, 'bfloat16': tf.bfloat16}[name]


class TrainIterator(StepStream):
  """Local training batches for steps start_step, start_step + 1, ...

  Each batch: 'image' (L, H, W, 3) normalised, 'label' (L,) int32 or (L, K) soft labels with
  mixup/cutmix, 'mask' (L,) 1.0 for real examples, 0.0 for skipped undecodable ones.
  `next_step` is the whole iterator state: `TrainIterator(..., start_step=next_step)` resumes.
  """

  def __init__(self, config, source, *, start_step: int = 0, process_index: int = 0,
               process_count: int = 1, device_count: int = 1):
    self._start(config.batch_size, len(source), start_step, device_count, process_count)
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
    self._iter = map(_drop_position, self._dataset.as_numpy_iterator())

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


def eval_iterator(source, prep, batch_size: int, num_classes: int, *,
                  process_index: int = 0, process_count: int = 1, device_count: int = 1,
                  label_key: str = 'label') -> Iterator[dict[str, np.ndarray]]:
  """Yields padded, masked local eval batches covering this process's shard exactly once.

  `prep`: the eval transform; `batch_size`: the global eval batch (all processes together);
  `label_key`: the int feature 'label', or a sequence feature of classes (ImageNet-ReaL's
  'real_label'), delivered as a (batch, num_classes) multi-hot 'label'.
  """
  local = check_batch_size(batch_size, device_count, process_count, 'eval_batch_size')
  indices, valid = eval_layout(len(source), local, process_index, process_count)
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(indices)), indices)).batch(local)
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
