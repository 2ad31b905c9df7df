"""ImageNet preprocessing as in the official TPU EfficientNet / ResNet code, with stateless RNG.

Every random choice takes an explicit `seed` (a [2] int tensor derived from the run seed and the
example's position in the training stream), so the same example at the same step is augmented
identically whatever the parallelism, and a resumed run reproduces the original exactly.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

# The eval transform's description and the crop constant are shared with the Grain backend.
from senet_jax.data.image_ops import CROP_PADDING, Preprocessing  # noqa: E402,F401


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG (also CMYK, grayscale, truncated), PNG, GIF or BMP bytes to uint8 RGB.

  The format is detected from the content, not the file name: PNG bytes in a '.JPEG' file (as
  in ImageNet) decode fine. Truncated JPEGs are recovered as far as their data goes.
  """
  def jpeg():
    return tf.io.decode_jpeg(image_bytes, channels=3, try_recover_truncated=True,
                             acceptable_fraction=0.25)

  def other():
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """Resizes to size x size in float32 (values 0..255, bicubic overshoot clipped)."""
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method=method)
  return tf.clip_by_value(image, 0.0, 255.0)


def center_crop_window(height, width, image_size: int, crop_fraction: float | None = None):
  """(offset_h, offset_w, size): the official eval crop of `res / (res + 32)` of the short side."""
  if crop_fraction is None or crop_fraction <= 0:
    crop_fraction = image_size / (image_size + CROP_PADDING)
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  size = tf.maximum(tf.cast(crop_fraction * shorter, tf.int32), 1)
  return (height - size + 1) // 2, (width - size + 1) // 2, size


def eval_image(image: tf.Tensor, image_size: int, method: str = 'bicubic',
               crop_fraction: float | None = None) -> tf.Tensor:
  """Center crop then resize (float32, 0..255)."""
  shape = tf.shape(image)
  top, left, size = center_crop_window(shape[0], shape[1], image_size, crop_fraction)
  image = tf.image.crop_to_bounding_box(image, top, left, size, size)
  return resize(image, image_size, method)


def random_crop_window(seed, height, width, area_range: Sequence[float] = (0.08, 1.0),
                       aspect_range: Sequence[float] = (3 / 4, 4 / 3), max_attempts: int = 10):
  """Inception-style random crop window (offset, size) as in the official code.

  Falls back to the official center crop when no valid window is found in `max_attempts`.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([height, width, 3]), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_range,
      area_range=area_range, max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def train_image(image: tf.Tensor, seed: tf.Tensor, image_size: int, method: str = 'bicubic',
                area_range: Sequence[float] = (0.08, 1.0), flip: bool = True,
                fallback_crop_fraction: float | None = None) -> tf.Tensor:
  """Random resized crop + horizontal flip (float32, 0..255).

  When no crop window is found, the official code falls back to the eval center crop
  (`fallback_crop_fraction`, None: res / (res + 32)).
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.shape(image)
  top, left, h, w = random_crop_window(crop_seed, shape[0], shape[1], area_range)
  # The op returns the whole image when it found nothing; the official code then center-crops.
  failed = tf.logical_and(tf.equal(h, shape[0]), tf.equal(w, shape[1]))
  image = tf.cond(
      failed, lambda: eval_image(image, image_size, method, fallback_crop_fraction),
      lambda: resize(tf.image.crop_to_bounding_box(image, top, left, h, w), image_size, method))
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def normalize(image: tf.Tensor, mean_rgb: Sequence[float], std_rgb: Sequence[float],
              dtype: tf.DType = tf.float32) -> tf.Tensor:
  """(image - mean) / std per channel, cast to `dtype` (bfloat16 on TPU halves host traffic)."""
  image = (image - tf.constant(mean_rgb, tf.float32)) / tf.constant(std_rgb, tf.float32)
  return tf.cast(image, dtype)
