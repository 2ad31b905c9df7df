"""Rebuild a model, its weights and its preprocessing from a checkpoint directory; read image
files for it with limits. Shared by the tools (senet_jax.tools: predict, cam, excitation,
evaluate), export and the NNX front end, so it stays below the tools, not among them.

Works for training workdirs (the checkpoint records the config) and converter outputs (the
checkpoint records model, model_kwargs, num_classes and preprocessing).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from senet_jax.checkpoint.record import Preprocessing, Record
from senet_jax.models import builder
from senet_jax.training import checkpoint
from senet_jax.training.checkpoint import CheckpointError
from senet_jax.utils import quiet

CLASS_NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                                'imagenet_classes.txt')


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loaded(Preprocessing):
  """A restored model: module, variables, and (as a `Preprocessing`) how to preprocess its
  inputs. `record` is the run record it was built from (None when assembled by hand)."""
  model: Any
  variables: dict
  num_classes: int
  config: dict
  record: Record | None = None

  @property
  def preprocessing(self) -> Preprocessing:
    """The eval transform alone (without the model and its weights)."""
    return Preprocessing(*(getattr(self, f.name) for f in dataclasses.fields(Preprocessing)))

  @property
  def name(self) -> str:
    """The registered model name."""
    return self.record.model if self.record else self.config.get('model', '')

  @property
  def class_names(self) -> list[str]:
    """One name per class: the record's, else `class_names(num_classes)`."""
    if self.record and self.record.class_names:
      return list(self.record.class_names)
    return class_names(self.num_classes)  # the module's function: ImageNet's, or 'class <i>'


def read_record(directory: str) -> Record:
  """The run record saved with the newest checkpoint under `directory` (any former shape)."""
  with quiet.orbax_read_only():
    found = checkpoint.open_newest(directory)
    if found is None:
      raise CheckpointError(f'no checkpoint found under {directory!r}')
    _, manager, step = found
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  return Record.from_json(dict(meta or {}))


def read_meta(directory: str) -> dict:
  """The run record of the newest checkpoint under `directory`, as a dict in the current shape."""
  return read_record(directory).to_json()


def load(directory: str) -> Loaded:
  """Model + float32 variables + preprocessing of the newest checkpoint under `directory`."""
  run = read_record(directory)
  if run.preprocessing is None:
    raise CheckpointError(f'{directory}: its record has no preprocessing (image_size, '
                          'eval_crop_fraction, interpolation, mean_rgb, std_rgb)')
  config = run.config_dict()  # {} for converted weights
  model = builder.build_model(run.model, num_classes=run.num_classes,
                              conv_impl=config.get('conv_impl', 'auto'),
                              model_kwargs=run.model_kwargs)
  with quiet.orbax_read_only():
    weights = checkpoint.load_params(directory)
  return Loaded(**{f: getattr(run.preprocessing, f) for f in Preprocessing.STORED},
                model=model, variables=weights, num_classes=run.num_classes, config=config,
                record=run)


def class_names(num_classes: int) -> list[str]:
  """ImageNet lemmas for 1000-way heads, else 'class <i>'."""
  if num_classes == 1000:
    with open(CLASS_NAMES_FILE) as f:
      return [line.rstrip('\n').split('\t', 1)[1] for line in f if not line.startswith('#')]
  return [f'class {i}' for i in range(num_classes)]


MAX_PIXELS = 40_000_000  # a 40 MP photo; a decompression bomb claims far more in its header


class ImageError(ValueError):
  """An input image cannot be used; the message names the file."""


def read_image_bytes(path: str, max_pixels: int = MAX_PIXELS) -> bytes:
  """The file's bytes once its header says it is an image of at most `max_pixels` pixels.

  The size comes from the header (PIL reads only that), so a small file that would expand
  to gigabytes is refused before anything is decoded.
  """
  import io
  from PIL import Image
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as err:
    raise ImageError(f'{path}: cannot read it ({err.strerror or err})') from None
  limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # we check the size below
  try:
    with Image.open(io.BytesIO(data)) as image:  # reads the header only
      (width, height), kind = image.size, image.format
  except Exception:  # noqa: BLE001 - PIL raises several types for non-images
    raise ImageError(f'{path}: not an image (expected JPEG, PNG, GIF or BMP)') from None
  finally:
    Image.MAX_IMAGE_PIXELS = limit
  if width * height > max_pixels:
    raise ImageError(f'{path}: {kind} of {width}x{height} pixels exceeds the limit of '
                     f'{max_pixels:,} pixels (refused before decoding; raise --max_pixels if '
                     f'it is genuine)')
  if kind not in ('JPEG', 'PNG', 'GIF', 'BMP'):
    raise ImageError(f'{path}: {kind} images are not supported (expected JPEG, PNG, GIF or BMP)')
  return data


def decode_image_file(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """The decoded uint8 RGB array of `path` (image_ops.decode: TF's JPEG decoder settings,
  without TensorFlow); ImageError (naming the file) when it is missing, over the pixel limit
  (read from its header, before decoding) or not decodable, truncated files included."""
  from senet_jax.data import image_ops
  data = read_image_bytes(path, max_pixels)
  try:
    return image_ops.decode(data, strict=True)
  except Exception as err:  # noqa: BLE001 - Pillow raises several types for broken data
    raise ImageError(f'{path}: cannot decode it ({str(err).splitlines()[0][:200]})') from None


def eval_transform(image: np.ndarray, prep) -> np.ndarray:
  """The eval center crop + resize of `prep` (a record.Preprocessing or Loaded), float32
  0..255: numpy for bilinear / bicubic (tf.image.resize's pixels, no TensorFlow), TensorFlow
  for its other methods."""
  from senet_jax.data import image_ops
  if not image_ops.needs_tensorflow(prep.interpolation):
    return np.ascontiguousarray(image_ops.eval_image(
        image, prep.image_size, prep.interpolation, prep.eval_crop_fraction))
  from senet_jax.data import preprocess
  return np.asarray(preprocess.eval_image(image, prep.image_size, prep.interpolation,
                                          prep.eval_crop_fraction))


def preprocess_images(paths: list[str], loaded: Loaded, max_pixels: int = MAX_PIXELS
                      ) -> tuple[np.ndarray | None, np.ndarray | None, list[str], list[str]]:
  """Like preprocess_files, but a bad file is reported and skipped, not fatal.

  Returns (batch, shown, paths kept, one error line per skipped file); batch and shown are
  None when no file could be used.
  """
  from senet_jax.data import image_ops
  batch, shown, kept, errors = [], [], [], []
  for path in paths:
    try:
      image = eval_transform(decode_image_file(path, max_pixels), loaded)
    except ImageError as err:
      errors.append(str(err))
      continue
    shown.append(np.round(image).astype(np.uint8))
    batch.append(image_ops.normalize(image, loaded.mean_rgb, loaded.std_rgb))
    kept.append(path)
  if not kept:
    return None, None, kept, errors
  return np.stack(batch), np.stack(shown), kept, errors


def preprocess_files(paths: list[str], loaded: Loaded) -> tuple[np.ndarray, np.ndarray]:
  """(normalised batch, uint8 resized crops for display) with the checkpoint's eval transform.

  Raises ImageError naming the first file that is missing, not an image or too large.
  """
  batch, shown, _, errors = preprocess_images(paths, loaded)
  if errors:
    raise ImageError(errors[0])
  return batch, shown
