"""AutoAugment (ImageNet policy v0) and RandAugment as in the official TPU code, plus mixup/cutmix.

Ops, magnitudes and the v0 policy (augment_table.py, shared with the Grain backend's
augment_ops.py) follow `tensorflow/tpu/models/official/efficientnet/autoaugment.py` (levels
0..10, fill value 128 for geometric ops); randomness is stateless (explicit seeds) so
augmentations are reproducible and resumable. Images are uint8 HxWx3.
"""
from __future__ import annotations

import math

import tensorflow as tf

# The op table (ops, policy, magnitude ranges) is shared with the Grain backend.
from senet_jax.data.augment_table import (  # noqa: E402,F401
    FILL, MAX_LEVEL, POLICY_V0, RANDAUGMENT_CONSTS, RANDAUGMENT_OPS, RANDAUGMENT_PROB, SIGNED,
    argument, cutout_window)


def _uniform(seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform([], seed, minval, maxval)


def _blend(image1, image2, factor):
  """Official blend: image1 + factor * (image2 - image1), clipped to uint8."""
  i1, i2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(i1 + factor * (i2 - i1), 0.0, 255.0), tf.uint8)


def _transform(image, matrix):
  """Projective transform (output -> input coordinates), nearest, fill 128."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(tf.reshape(matrix, [1, 8]), tf.float32),
      output_shape=shape[:2], fill_value=float(FILL), interpolation='NEAREST',
      fill_mode='CONSTANT')
  return out[0]


def _rotate(image, degrees):
  radians = degrees * math.pi / 180.0
  h, w = (tf.cast(d, tf.float32) for d in tf.unstack(tf.shape(image)[:2]))
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return _transform(image, tf.stack([cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0]))


def _equalize_channel(channel):
  channel = tf.cast(channel, tf.int32)
  histo = tf.histogram_fixed_width(channel, [0, 255], nbins=256)
  nonzero = tf.gather(histo, tf.reshape(tf.where(histo > 0), [-1]))
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

  def apply():
    lut = (tf.cumsum(histo) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.gather(lut, channel)

  return tf.cast(tf.cond(tf.equal(step, 0), lambda: channel, apply), tf.uint8)


def _autocontrast_channel(channel):
  channel = tf.cast(channel, tf.float32)
  lo, hi = tf.reduce_min(channel), tf.reduce_max(channel)
  scaled = (channel - lo) * (255.0 / tf.maximum(hi - lo, 1.0))
  return tf.cast(tf.clip_by_value(tf.where(hi > lo, scaled, channel), 0, 255), tf.uint8)


def _per_channel(fn, image):
  return tf.stack([fn(image[..., c]) for c in range(3)], axis=-1)


def _sharpness(image, factor):
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  'VALID')[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0, 255), tf.uint8)
  # Border pixels keep their value (the official code pads the smoothed image with the input).
  mask = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(tf.equal(mask, 1), tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return _blend(degenerate, image, factor)


def _cutout(image, size, seed):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  cy = tf.random.stateless_uniform([], seed, 0, h, tf.int32)
  cx = tf.random.stateless_uniform([], seed + 1, 0, w, tf.int32)
  inside = cutout_window(tf.range(h)[:, None], tf.range(w)[None, :], (cy, cx), size)
  return tf.where(inside[..., None], tf.constant(FILL, tf.uint8), image)


def apply_op(name: str, image, level, seed, translate_const=250.0, cutout_const=100):
  """Applies the named op at `level` (0..10); geometric magnitudes get a random sign."""
  frac = tf.cast(level, tf.float32) / MAX_LEVEL
  sign = tf.where(_uniform(seed) < 0.5, -1.0, 1.0)
  consts = dict(translate_const=translate_const, cutout_const=cutout_const)
  arg = argument(name, frac, consts)  # the table's magnitude (sign: SIGNED ops below)
  gray = lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  if name == 'AutoContrast':
    return _per_channel(_autocontrast_channel, image)
  if name == 'Equalize':
    return _per_channel(_equalize_channel, image)
  if name == 'Invert':
    return 255 - image
  if name == 'Rotate':
    return _rotate(image, sign * arg)
  if name == 'Posterize':
    shift = tf.cast(8 - tf.cast(arg, tf.int32), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)
  if name == 'Solarize':
    threshold = tf.cast(arg, tf.int32)
    return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)
  if name == 'SolarizeAdd':
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + tf.cast(arg, tf.int32),
                                     0, 255), tf.uint8)
    return tf.where(image < 128, added, image)
  if name == 'Color':
    return _blend(gray(), image, arg)
  if name == 'Contrast':
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, arg)
  if name == 'Brightness':
    return _blend(tf.zeros_like(image), image, arg)
  if name == 'Sharpness':
    return _sharpness(image, arg)
  if name == 'ShearX':
    return _transform(image, tf.stack([1.0, sign * arg, 0, 0, 1, 0, 0, 0]))
  if name == 'ShearY':
    return _transform(image, tf.stack([1.0, 0, 0, sign * arg, 1, 0, 0, 0]))
  if name == 'TranslateX':
    return _transform(image, tf.stack([1.0, 0, -sign * arg, 0, 1, 0, 0, 0]))
  if name == 'TranslateY':
    return _transform(image, tf.stack([1.0, 0, 0, 0, 1, -sign * arg, 0, 0]))
  if name == 'Cutout':
    return _cutout(image, tf.cast(arg, tf.int32), seed)
  raise ValueError(f'unknown augmentation op {name!r}; known: {RANDAUGMENT_OPS}')


def _maybe(image, name, prob, level, seed, **consts):
  s_apply, s_op = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  return tf.cond(_uniform(s_apply) < prob,
                 lambda: apply_op(name, image, level, s_op, **consts), lambda: image)


def autoaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """AutoAugment ImageNet policy v0: one random sub-policy of two ops per image."""
  s_pick, s_ops = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  pick = tf.random.stateless_uniform([], s_pick, 0, len(POLICY_V0), tf.int32)

  def branch(sub_policy):
    def run():
      out, seeds = image, tf.random.experimental.stateless_split(s_ops, len(sub_policy))
      for (name, prob, level), s in zip(sub_policy, tf.unstack(seeds)):
        out = _maybe(out, name, prob, level, s)
      return out
    return run

  return tf.switch_case(pick, [branch(p) for p in POLICY_V0])


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2,
                magnitude: float = 10) -> tf.Tensor:
  """RandAugment (N, M): N times, a uniformly chosen op applied with probability 0.5 at M."""
  consts = RANDAUGMENT_CONSTS
  for s in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    s_pick, s_op = tf.unstack(tf.random.experimental.stateless_split(s, 2))
    pick = tf.random.stateless_uniform([], s_pick, 0, len(RANDAUGMENT_OPS), tf.int32)
    branches = [(lambda name=name, img=image: _maybe(img, name, RANDAUGMENT_PROB, magnitude,
                                                    s_op, **consts))
                for name in RANDAUGMENT_OPS]
    image = tf.switch_case(pick, branches)
  return image


def mix_batch(images, labels_onehot, seed, mixup_alpha: float, cutmix_alpha: float):
  """Mixup or CutMix (chosen 50/50 when both are on) with the batch reversed, as in timm.

  Labels are mixed with the same area weight, so every row still sums to one.
  """
  s_choice, s_lam, s_box = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix_t = _uniform(s_choice) < 0.5
  else:
    use_cutmix_t = tf.constant(cutmix_alpha > 0)
  alpha_t = tf.where(use_cutmix_t, float(cutmix_alpha), float(mixup_alpha))
  lam = _sample_beta(s_lam, alpha_t)
  flipped = tf.reverse(images, [0])

  def cutmix():
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    cut = tf.sqrt(1.0 - lam)
    ch = tf.cast(cut * tf.cast(h, tf.float32), tf.int32)
    cw = tf.cast(cut * tf.cast(w, tf.float32), tf.int32)
    cy = tf.random.stateless_uniform([], s_box, 0, h, tf.int32)
    cx = tf.random.stateless_uniform([], s_box + 1, 0, w, tf.int32)
    y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
    x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
    return tf.where(box[None, :, :, None], flipped, images), kept

  def mixup():
    mixed = lam * tf.cast(images, tf.float32) + (1 - lam) * tf.cast(flipped, tf.float32)
    return tf.cast(mixed, images.dtype), lam

  images, weight = tf.cond(use_cutmix_t, cutmix, mixup)
  labels = weight * labels_onehot + (1.0 - weight) * tf.reverse(labels_onehot, [0])
  return images, labels


def _sample_beta(seed, alpha):
  s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  g1 = tf.random.stateless_gamma([], s1, alpha)
  g2 = tf.random.stateless_gamma([], s2, alpha)
  return g1 / (g1 + g2)
