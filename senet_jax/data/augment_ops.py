"""AutoAugment / RandAugment and mixup / cutmix in numpy (and Pillow): the Grain backend's ops.

The same definitions as augment.py (tf.data), from the same table (augment_table.py): each op
reproduces its TF formula in float32 with the same truncations, so an op given the same
argument returns the same pixels (tests/test_grain_pipeline.py compares them). What each op
uses:
- point ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd) and blends
  (Color, Contrast, Brightness, Sharpness): numpy lookup tables / float32 arithmetic. Pillow's
  ImageOps / ImageEnhance are not used for them: Image.blend computes in double and the 'L'
  conversion uses other luma weights than tf.image.rgb_to_grayscale, both off by one grey
  level on some pixels;
- Sharpness' smoothing: Pillow's ImageFilter.SMOOTH (the same 3x3 kernel, borders kept);
- geometric ops (Rotate, Shear, Translate): TF's projective transform with nearest sampling
  (std::round, fill 128) as a numpy gather. Pillow's Image.transform samples at pixel centres
  and floors, which disagrees with it at exact half-pixel coordinates (integer shears).
Randomness comes from a numpy Generator seeded by (seed, example position).
"""
from __future__ import annotations

import math

import numpy as np

from senet_jax.data import augment_table as table


def _blend(image1: np.ndarray, image2: np.ndarray, factor) -> np.ndarray:
  """image1 + factor * (image2 - image1) in float32, clipped, truncated to uint8."""
  i1, i2 = image1.astype(np.float32), image2.astype(np.float32)
  return np.clip(i1 + np.float32(factor) * (i2 - i1), 0.0, 255.0).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
  """tf.image.rgb_to_grayscale of uint8 RGB: (H, W) uint8, float32 luma truncated."""
  flt = image.astype(np.float32) * np.float32(1.0 / 255.0)
  weights = np.asarray([0.2989, 0.5870, 0.1140], np.float32)
  gray = flt[..., 0] * weights[0] + flt[..., 1] * weights[1] + flt[..., 2] * weights[2]
  return (gray * np.float32(255.5)).astype(np.uint8)


def transform(image: np.ndarray, matrix) -> np.ndarray:
  """TF's projective transform (output -> input coordinates), nearest, fill FILL.

  The input coordinates in TF's float32 order of operations (rows and columns broadcast, not
  meshed), then one gather of flat pixel indices from the image with a fill pixel appended.
  """
  a = np.asarray(matrix, np.float32)
  h, w, c = image.shape
  xs = np.arange(w, dtype=np.float32)[None, :]
  ys = np.arange(h, dtype=np.float32)[:, None]
  ix = _round_half_away(a[0] * xs + a[1] * ys + a[2])
  iy = _round_half_away(a[3] * xs + a[4] * ys + a[5])
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  flat = np.where(inside, iy * w + ix, h * w)  # index h * w: the fill pixel
  pixels = np.concatenate([image.reshape(h * w, c), np.full((1, c), table.FILL, image.dtype)])
  return np.take(pixels, flat, axis=0)  # 4x faster than pixels[flat]


def _round_half_away(v: np.ndarray) -> np.ndarray:
  """std::round: halves away from zero (np.round rounds them to even): trunc(v), plus sign(v)
  where the fraction (exact in float32) is at least one half."""
  whole = np.trunc(v)
  up = (np.abs(v - whole) >= np.float32(0.5)).astype(np.float32)
  return (whole + np.copysign(up, v)).astype(np.int32)


def rotate(image: np.ndarray, degrees) -> np.ndarray:
  """Rotation about the image centre (tf.contrib.image.rotate's matrix), fill FILL."""
  radians = np.float32(degrees) * np.float32(math.pi) / np.float32(180.0)
  h, w = (np.float32(d) for d in image.shape[:2])
  cos, sin = np.cos(radians), np.sin(radians)
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / np.float32(2.0)
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / np.float32(2.0)
  return transform(image, [cos, -sin, x_off, sin, cos, y_off])


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
  histo = np.bincount(channel.reshape(-1), minlength=256).astype(np.int64)
  nonzero = histo[histo > 0]
  step = (nonzero.sum() - nonzero[-1]) // 255
  if step == 0:
    return channel
  lut = (np.cumsum(histo) + step // 2) // step
  lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255).astype(np.uint8)
  return lut[channel]


def _autocontrast_channel(channel: np.ndarray) -> np.ndarray:
  flt = channel.astype(np.float32)
  lo, hi = flt.min(), flt.max()
  if hi <= lo:
    return channel
  scaled = (flt - lo) * (np.float32(255.0) / np.maximum(hi - lo, np.float32(1.0)))
  return np.clip(scaled, 0, 255).astype(np.uint8)


def _per_channel(fn, image: np.ndarray) -> np.ndarray:
  return np.stack([fn(image[..., c]) for c in range(3)], axis=-1)


def sharpness(image: np.ndarray, factor) -> np.ndarray:
  """Blend with the 3x3 smoothed image ((1 1 1; 1 5 1; 1 1 1) / 13, border pixels kept)."""
  from PIL import Image, ImageFilter
  smooth = np.asarray(Image.fromarray(image).filter(ImageFilter.SMOOTH))
  return _blend(smooth, image, factor)


def cutout(image: np.ndarray, size: int, center) -> np.ndarray:
  """Pixels within `size` (Chebyshev distance) of `center` (row, col) set to FILL."""
  h, w = image.shape[:2]
  inside = table.cutout_window(np.arange(h)[:, None], np.arange(w)[None, :], center, size)
  out = image.copy()
  out[inside] = table.FILL
  return out


def apply_with_argument(name: str, image: np.ndarray, arg, rng=None) -> np.ndarray:
  """Op `name` with its (signed) argument from augment_table.argument; `rng`: Cutout's centre."""
  if name == 'AutoContrast':
    return _per_channel(_autocontrast_channel, image)
  if name == 'Equalize':
    return _per_channel(_equalize_channel, image)
  if name == 'Invert':
    return 255 - image
  if name == 'Rotate':
    return rotate(image, arg)
  if name == 'Posterize':
    # TF clamps a uint8 shift to 7 bits, so level < 2.5 (arg < 1) keeps the top bit (the
    # reference's behaviour) where Pillow's posterize(0) would give black.
    shift = min(8 - int(arg), 7)
    return (image >> shift) << shift
  if name == 'Solarize':
    return np.where(image.astype(np.int32) < int(arg), image, 255 - image)
  if name == 'SolarizeAdd':
    added = np.clip(image.astype(np.int32) + int(arg), 0, 255).astype(np.uint8)
    return np.where(image < 128, added, image)
  if name == 'Color':
    return _blend(np.repeat(grayscale(image)[..., None], 3, -1), image, arg)
  if name == 'Contrast':
    gray = grayscale(image)
    mean = np.float32(np.sum(gray, dtype=np.int64)) / np.float32(gray.size)
    return _blend(np.full_like(image, np.uint8(mean)), image, arg)
  if name == 'Brightness':
    return _blend(np.zeros_like(image), image, arg)
  if name == 'Sharpness':
    return sharpness(image, arg)
  if name in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
    shear_x, shear_y = (arg, 0.0) if name == 'ShearX' else (0.0, arg) if name == 'ShearY' else (
        0.0, 0.0)
    dx, dy = (-arg, 0.0) if name == 'TranslateX' else (0.0, -arg) if name == 'TranslateY' else (
        0.0, 0.0)
    return transform(image, [1.0, shear_x, dx, shear_y, 1.0, dy])
  if name == 'Cutout':
    h, w = image.shape[:2]
    return cutout(image, int(arg), (int(rng.integers(h)), int(rng.integers(w))))
  raise ValueError(f'unknown augmentation op {name!r}; known: {table.RANDAUGMENT_OPS}')


def apply_op(name: str, image: np.ndarray, level, rng: np.random.Generator,
             consts: dict | None = None) -> np.ndarray:
  """Op `name` at `level` (0..10) of uint8 `image`; geometric magnitudes get a random sign."""
  frac = np.float32(level) / np.float32(table.MAX_LEVEL)
  arg = table.argument(name, frac, consts)
  if name in table.SIGNED:
    arg = (np.float32(-1.0) if rng.random() < 0.5 else np.float32(1.0)) * arg
  return apply_with_argument(name, image, arg, rng)


def autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """AutoAugment ImageNet policy v0: one random sub-policy of two ops per image."""
  for name, prob, level in table.POLICY_V0[int(rng.integers(len(table.POLICY_V0)))]:
    if rng.random() < prob:
      image = apply_op(name, image, level, rng, table.AUTOAUGMENT_CONSTS)
  return image


def randaugment(image: np.ndarray, rng: np.random.Generator, num_layers: int = 2,
                magnitude: float = 10) -> np.ndarray:
  """RandAugment (N, M): N times, a uniformly chosen op applied with probability 0.5 at M."""
  for _ in range(num_layers):
    name = table.RANDAUGMENT_OPS[int(rng.integers(len(table.RANDAUGMENT_OPS)))]
    if rng.random() < table.RANDAUGMENT_PROB:
      image = apply_op(name, image, magnitude, rng, table.RANDAUGMENT_CONSTS)
  return image


def mix_batch(images: np.ndarray, labels_onehot: np.ndarray, rng: np.random.Generator,
              mixup_alpha: float, cutmix_alpha: float):
  """Mixup or CutMix (50/50 when both are on) with the batch reversed, as augment.mix_batch."""
  use_cutmix = rng.random() < 0.5 if mixup_alpha > 0 and cutmix_alpha > 0 else cutmix_alpha > 0
  alpha = cutmix_alpha if use_cutmix else mixup_alpha
  lam = float(rng.beta(alpha, alpha))
  flipped = images[::-1]
  if use_cutmix:
    h, w = images.shape[1:3]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(cut * h), int(cut * w)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = images.copy()
    mixed[:, y0:y1, x0:x1] = flipped[:, y0:y1, x0:x1]
    weight = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  else:
    mixed = (lam * images.astype(np.float32) + (1 - lam) * flipped.astype(np.float32)).astype(
        images.dtype)
    weight = lam
  labels = weight * labels_onehot + (1.0 - weight) * labels_onehot[::-1]
  return mixed, labels.astype(np.float32)
