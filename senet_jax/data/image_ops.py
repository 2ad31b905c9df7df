"""ImageNet preprocessing without TensorFlow: libjpeg-turbo / Pillow decode, numpy crops,
resizes, normalises.

The Grain backend's twin of preprocess.py (tf.data), same definitions:
- decode: libjpeg-turbo through simplejpeg for JPEGs with TF's decoder settings (bitwise the
  tf.data path's pixels, CMYK included); Pillow for the rest (PNG, GIF, BMP by content;
  truncated JPEGs decoded as far as their data goes, as TF's try_recover_truncated).
- resize: `resize` reproduces `tf.image.resize(..., antialias=False)` (what the TPU reference
  and preprocess.py use): half-pixel centres, Keys cubic (a = -0.5, TF's 1024-entry coefficient
  table) or linear taps, taps outside the image dropped and the rest renormalised. Pillow's
  resize always antialiases when shrinking (its kernel widens with the scale), which is a
  different image by several grey levels on textured content, so it is not used here; the
  taps are applied as scipy sparse matrix products (no per-pixel Python).
- crops: the official eval center crop (res / (res + 32) of the shorter side) and the
  Inception random crop window with the algorithm of TF's sample_distorted_bounding_box
  (min_object_covered 0.1, 10 attempts, eval center crop when none is found), drawn from a
  numpy Generator instead of TF's stateless RNG.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Sequence

import numpy as np

# The eval transform's description is the run record's (one type for every reader and writer).
from senet_jax.checkpoint.record import Preprocessing  # noqa: F401 (re-exported)

CROP_PADDING = 32  # eval center crop keeps res / (res + 32) of the shorter side
RESIZE_METHODS = ('bilinear', 'bicubic')  # what this module reproduces of tf.image.resize
_TABLE_SIZE = 1024  # TF's bicubic coefficient table (resize_bicubic_op.cc)


def decode(data: bytes, strict: bool = False) -> np.ndarray:
  """Image bytes (format from the content) -> uint8 RGB array (H, W, 3).

  JPEGs go to libjpeg-turbo through simplejpeg with the fast integer DCT and fancy upsampling:
  TF's `decode_jpeg` defaults, so the pixels equal the tf.data path's bit for bit (CMYK
  converted with TF's formula; and no Pillow copy). What libjpeg warns about (truncated or
  damaged data) Pillow decodes as far as the data goes, as TF's try_recover_truncated, and so
  the other formats (PNG, GIF, BMP). `strict` (the tools' single files): a truncated or
  damaged file raises instead.
  """
  if data[:3] == b'\xff\xd8\xff':
    try:
      return _decode_jpeg(data)
    except ValueError:  # simplejpeg's strict mode: any libjpeg warning, or a layout it refuses
      if strict:
        raise
  image = _pillow_decode(data)
  if strict:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
      img.verify()  # the file's structure (a cut-off PNG) and checksums: OSError if broken
  return image


def _decode_jpeg(data: bytes) -> np.ndarray:
  import simplejpeg  # imported on first decode: importing this module has no cost
  if simplejpeg.decode_jpeg_header(data)[2] in ('CMYK', 'YCCK'):
    cmyk = simplejpeg.decode_jpeg(data, colorspace='CMYK', fastdct=True, fastupsample=False)
    cmyk = cmyk.astype(np.uint16)
    # TF (jpeg_mem.cc) converts Adobe's inverted CMYK as channel * K / 255, truncated.
    return ((cmyk[..., :3] * cmyk[..., 3:]) // 255).astype(np.uint8)
  return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=True, fastupsample=False)


def encode_png(image: np.ndarray) -> bytes:
  """uint8 (H, W) or (H, W, C) -> PNG bytes (Pillow; lossless: any encoder stores these pixels).
  What the offline dataset builders hand TFDS, which would encode an array with TensorFlow."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def _pillow_decode(data: bytes) -> np.ndarray:
  from PIL import Image, ImageFile
  # As TF's decode_jpeg(try_recover_truncated=True): keep what a cut-off file holds. Pillow
  # has only this process-wide switch, set the same way by every caller (strict callers verify
  # the file afterwards instead); the header check before decoding rejects broken files.
  ImageFile.LOAD_TRUNCATED_IMAGES = True
  with Image.open(io.BytesIO(data)) as img:
    if img.mode != 'RGB':  # L, CMYK, P, RGBA (alpha dropped, as decode_image(channels=3))
      img = img.convert('RGB')
    return np.asarray(img)


def needs_tensorflow(method: str) -> bool:
  """Whether resize `method` is one only tf.data has (not in RESIZE_METHODS); then raises
  MissingDependencyError, naming the method, if TensorFlow is not installed."""
  if method in RESIZE_METHODS:
    return False
  from senet_jax.utils import tf_host
  tf_host.require_tensorflow(f'interpolation {method!r} (numpy resizes '
                             f'{" and ".join(RESIZE_METHODS)})')
  return True


def _bicubic_table() -> np.ndarray:
  """TF's Keys cubic (a = -0.5) coefficients at delta = i / 1024: [i, 0] near, [i, 1] far tap."""
  a = -0.5
  x = np.arange(_TABLE_SIZE + 1, dtype=np.float32) / np.float32(_TABLE_SIZE)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far_x = x + 1
  far = ((a * far_x - 5 * a) * far_x + 8 * a) * far_x - 4 * a
  return np.stack([near, far], -1).astype(np.float32)


_BICUBIC = _bicubic_table()


@functools.lru_cache(maxsize=256)
def _taps(in_size: int, out_size: int, method: str):
  """(indices, weights), each (out_size, taps): TF's half-pixel sampling of one axis."""
  scale = np.float32(in_size) / np.float32(out_size)
  loc = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  base = np.floor(loc).astype(np.int64)
  delta = (loc - base).astype(np.float32)
  if method == 'bilinear':
    offsets, weights = np.array([0, 1]), np.stack([1 - delta, delta], -1)
  elif method == 'bicubic':
    q = np.rint(delta * _TABLE_SIZE).astype(np.int64)  # lrintf: the table's quantised delta
    offsets = np.array([-1, 0, 1, 2])
    weights = np.stack([_BICUBIC[q, 1], _BICUBIC[q, 0], _BICUBIC[_TABLE_SIZE - q, 0],
                        _BICUBIC[_TABLE_SIZE - q, 1]], -1)
  else:
    raise ValueError(f'interpolation {method!r}: the Grain backend has {list(RESIZE_METHODS)}')
  index = base[:, None] + offsets[None, :]
  inside = (index >= 0) & (index < in_size)
  weights = np.where(inside, weights, np.float32(0)).astype(np.float32)
  # Taps outside the image are dropped and the rest renormalised (TF's keys-cubic borders;
  # for linear taps this equals TF's clamping of the lower/upper index).
  weights /= weights.sum(-1, keepdims=True)
  return np.clip(index, 0, in_size - 1), weights


@functools.lru_cache(maxsize=1024)
def _matrix(in_size: int, out_size: int, method: str):
  """The (out_size, in_size) sparse matrix of one axis' taps (a few non-zeros per row)."""
  import scipy.sparse  # a scikit-learn dependency
  index, weights = _taps(in_size, out_size, method)
  rows = np.repeat(np.arange(out_size), index.shape[1])
  return scipy.sparse.csr_matrix((weights.reshape(-1), (rows, index.reshape(-1))),
                                 shape=(out_size, in_size), dtype=np.float32)


@functools.lru_cache(maxsize=1024)
def _column_matrix(in_size: int, out_size: int, channels: int, method: str, flip: bool):
  """The column pass as a row pass: (out_size * C, in_size * C), one axis' taps per channel,
  output columns in reverse order when `flip` (a mirrored image at no extra cost)."""
  import scipy.sparse
  matrix = _matrix(in_size, out_size, method)
  if flip:
    matrix = matrix[::-1]
  eye = scipy.sparse.identity(channels, dtype=np.float32, format='csr')
  return scipy.sparse.kron(matrix, eye, format='csr').astype(np.float32)


def resize(image: np.ndarray, size: int, method: str, flip: bool = False) -> np.ndarray:
  """size x size float32 (0..255, overshoot clipped), as tf.image.resize(antialias=False);
  mirrored left-right when `flip`.

  Separable: a sparse tap matrix per axis (scipy's sparse product runs the few taps per output
  in C). Rows first on (H, W*C); one transposed copy makes the column pass a row pass too; the
  result is a view of that (size*C, size) buffer (`normalize` reads it in one pass). 0.4 ms
  for 328 -> 224 bicubic, a third of gathers or of transposing back and forth.
  """
  h, w, c = image.shape
  rows = image.astype(np.float32).reshape(h, w * c)
  if h != size:  # at scale 1 both kernels are the identity
    rows = _matrix(h, size, method) @ rows
  columns = np.ascontiguousarray(rows.T)  # (W*C, size)
  out = _column_matrix(w, size, c, method, flip) @ columns  # (size*C, size): [x*C + ch, y]
  np.clip(out, 0.0, 255.0, out=out)
  return out.T.reshape(size, size, c)


def center_crop_window(height: int, width: int, image_size: int,
                       crop_fraction: float | None = None):
  """(top, left, size): the official eval crop of `res / (res + 32)` of the shorter side."""
  if crop_fraction is None or crop_fraction <= 0:
    crop_fraction = image_size / (image_size + CROP_PADDING)
  # float32 as preprocess.center_crop_window computes it
  size = max(int(np.float32(crop_fraction) * np.float32(min(height, width))), 1)
  return (height - size + 1) // 2, (width - size + 1) // 2, size


def eval_image(image: np.ndarray, image_size: int, method: str = 'bicubic',
               crop_fraction: float | None = None) -> np.ndarray:
  """Center crop then resize (float32, 0..255)."""
  top, left, size = center_crop_window(image.shape[0], image.shape[1], image_size,
                                       crop_fraction)
  return resize(image[top:top + size, left:left + size], image_size, method)


def _crop_of_aspect(rng: np.random.Generator, height: int, width: int, area_range, aspect):
  """One attempt of TF's GenerateRandomCrop: (top, left, h, w) or None."""
  area = np.float32(height * width)
  min_area, max_area = np.float32(area_range[0]) * area, np.float32(area_range[1]) * area
  h = int(np.rint(math.sqrt(min_area / aspect)))
  max_h = int(np.rint(math.sqrt(max_area / aspect)))
  if np.rint(max_h * aspect) > width:  # the tallest crop whose rounded width fits
    max_h = int((width + 0.5 - 1e-7) / aspect)
    if np.rint(max_h * aspect) > width:
      max_h -= 1
  max_h = min(max_h, height)
  h = min(h, max_h)
  if h < max_h:
    h += int(rng.integers(max_h - h + 1))
  w = int(np.rint(h * aspect))
  if w * h < min_area:
    h += 1
    w = int(np.rint(h * aspect))
  if w * h > max_area:
    h -= 1
    w = int(np.rint(h * aspect))
  if not (min_area <= w * h <= max_area) or not (0 < w <= width and 0 < h <= height):
    return None
  top = int(rng.integers(height - h)) if h < height else 0
  left = int(rng.integers(width - w)) if w < width else 0
  return top, left, h, w


def random_crop_window(rng: np.random.Generator, height: int, width: int,
                       area_range: Sequence[float] = (0.08, 1.0),
                       aspect_range: Sequence[float] = (3 / 4, 4 / 3),
                       min_object_covered: float = 0.1, max_attempts: int = 10):
  """Inception crop window (top, left, h, w); the whole image when no attempt succeeds."""
  for _ in range(max_attempts):
    aspect = np.float32(rng.random() * (aspect_range[1] - aspect_range[0]) + aspect_range[0])
    window = _crop_of_aspect(rng, height, width, area_range, aspect)
    # The whole image is the box to cover: the crop must hold min_object_covered of it.
    if window and window[2] * window[3] >= max(1, min_object_covered * height * width):
      return window
  return 0, 0, height, width


def train_image(image: np.ndarray, rng: np.random.Generator, image_size: int,
                method: str = 'bicubic', area_range: Sequence[float] = (0.08, 1.0),
                flip: bool = True, fallback_crop_fraction: float | None = None) -> np.ndarray:
  """Random resized crop + horizontal flip (float32, 0..255), as preprocess.train_image."""
  height, width = image.shape[:2]
  top, left, h, w = random_crop_window(rng, height, width, area_range)
  if (h, w) == (height, width):  # nothing found (or the whole image): the eval center crop
    top, left, size = center_crop_window(height, width, image_size, fallback_crop_fraction)
    h = w = size
  mirror = flip and rng.random() < 0.5
  return resize(image[top:top + h, left:left + w], image_size, method, mirror)


def normalize(image: np.ndarray, mean_rgb: Sequence[float], std_rgb: Sequence[float],
              dtype: str = 'float32', out: np.ndarray | None = None) -> np.ndarray:
  """(image - mean) / std per channel in float32, cast to `dtype` ('float32', 'bfloat16').

  `out`: a float32 array to write into (a slot of the batch: no temporary, no stacking copy);
  the cast to bfloat16 is then the caller's, once per batch.
  """
  h, w, c = image.shape
  if out is not None and not out.flags.c_contiguous:  # its reshape would be a copy, lost
    raise ValueError('normalize(out=...) needs a C-contiguous array (a batch slot)')
  # Rows of W*C values against a tiled mean/std: numpy's inner loop then runs over a whole row,
  # not over 3 channels (5x faster); a view of resize's output, of a contiguous image and of
  # a batch slot alike.
  result = np.subtract(image.reshape(h, w * c), _tiled(tuple(mean_rgb), w),
                       out=None if out is None else out.reshape(h, w * c), dtype=np.float32)
  result /= _tiled(tuple(std_rgb), w)
  result = result.reshape(h, w, c)
  return result if out is not None else cast(result, dtype)


@functools.lru_cache(maxsize=64)
def _tiled(values: tuple, times: int) -> np.ndarray:
  tiled = np.tile(np.asarray(values, np.float32), times)
  tiled.flags.writeable = False  # shared by every caller through the cache
  return tiled


def cast(batch: np.ndarray, dtype: str) -> np.ndarray:
  """float32 -> `dtype` ('float32' returns `batch` itself)."""
  if dtype == 'bfloat16':
    import ml_dtypes  # a JAX dependency
    return batch.astype(ml_dtypes.bfloat16)
  return batch
