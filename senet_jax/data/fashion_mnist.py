"""`senet_fashion_mnist`: Zalando's Fashion-MNIST as an offline TFDS dataset (ArrayRecord).

60,000 training and 10,000 test images of 28x28 grayscale clothing articles in 10 classes
(Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747). Nothing is downloaded at run time: the idx
files come from Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist), or
any directory holding the four files (gzipped or not) under their original names:

    make data-fashion    # apt-get install dataset-fashion-mnist, then the build below
    python -m senet_jax.data.fashion_mnist --idx_dir=/usr/share/datasets/fashion-mnist \
        --data_dir=~/tensorflow_datasets

Every image is zero-padded by 2 pixels to 32x32 (the background is black, as LeNet-5 did for
MNIST): the networks downsample by 32 (config.image_size >= 32), and padding keeps the pixels
1:1 where a resize would blur them. Images are stored as grayscale PNG; the pipeline decodes
them to RGB. The splits are the dataset's own 'train' and 'test' files; TFDS stores each in a
fixed pseudo-random order (a hash of the index), so `train[:10000]` is a fixed, roughly
class-balanced subset.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from senet_jax.data import image_ops

NAME = 'senet_fashion_mnist'
NUM_CLASSES = 10
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'  # where `dataset-fashion-mnist` installs
SIZE = 32      # stored side length: 28 + 2 * PAD
PAD = 2
FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
CLASS_NAMES = ('t-shirt/top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
               'sneaker', 'bag', 'ankle boot')
_IDX_TYPES = {0x08: np.uint8}  # the only element type these files use
INSTALL_HINT = ('`make data-fashion` (apt-get install dataset-fashion-mnist, then builds it), '
                'or `python -m senet_jax.data.fashion_mnist --idx_dir=DIR --data_dir=DIR`')


def read_idx(path: str) -> np.ndarray:
  """The array stored in an idx file (LeCun's MNIST format), gzipped or not.

  Header: two zero bytes, the element type (0x08 = uint8), the number of dimensions, then each
  dimension as a big-endian uint32. Errors name the file and what was expected.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] not in _IDX_TYPES:
    raise ValueError(f'{path}: not an idx file of uint8 (expected the bytes 00 00 08 ndim)')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise ValueError(f'{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but '
                     f'{len(data) - header} bytes follow (truncated file?)')
  return np.frombuffer(data, _IDX_TYPES[data[2]], offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an idx file (gzipped when `path` ends with .gz); for tests."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def _find(idx_dir: str, stem: str) -> str:
  for name in (stem, stem + '.gz'):
    if os.path.exists(os.path.join(idx_dir, name)):
      return os.path.join(idx_dir, name)
  raise FileNotFoundError(f'{os.path.join(idx_dir, stem)}[.gz] does not exist: expected the '
                          f'Fashion-MNIST idx files there; install them with {INSTALL_HINT}')


def load_split(idx_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,) int64) of 'train' or 'test', checked."""
  image_file, label_file = (_find(idx_dir, stem) for stem in FILES[split])
  images, labels = read_idx(image_file), read_idx(label_file)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'{image_file}: expected (N, H, W) images and N labels, got '
                     f'{images.shape} and {labels.shape}')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f'{label_file}: label {int(labels.max())} outside [0, {NUM_CLASSES})')
  return images, labels.astype(np.int64)


def pad_image(image: np.ndarray) -> np.ndarray:
  """A 28x28 image zero-padded to SIZE x SIZE x 1 (grayscale channel last)."""
  p = (SIZE - image.shape[0]) // 2
  q = (SIZE - image.shape[1]) // 2
  out = np.zeros((SIZE, SIZE, 1), np.uint8)
  out[p:p + image.shape[0], q:q + image.shape[1], 0] = image
  return out


class SenetFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local idx files (the manual dir), padded to 32x32."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'The four idx files, e.g. from {INSTALL_HINT}.'

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo itself, not dataset_info_from_configs: that reads metadata files from the
    # module's package, which `python -m` (module __main__) does not have.
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(SIZE, SIZE, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        description='Fashion-MNIST (arXiv:1708.07747), zero-padded from 28x28 to 32x32.')

  def _split_generators(self, dl_manager):
    idx_dir = str(dl_manager.manual_dir)
    return {split: self._generate_examples(*load_split(idx_dir, split)) for split in FILES}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      # PNG bytes: TFDS would encode an array with TensorFlow.
      yield i, {'image': io.BytesIO(image_ops.encode_png(pad_image(image)[..., 0])),
                'label': int(label)}


def build(data_dir: str | None = None, idx_dir: str = DEBIAN_DIR) -> tfds.core.DatasetBuilder:
  """Builds (once) and returns the dataset in ArrayRecord format under `data_dir`."""
  builder = SenetFashionMnist(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    for stem in (*FILES['train'], *FILES['test']):
      _find(idx_dir, stem)  # one clear line before TFDS starts
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=idx_dir))
  return builder


def open_builder(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The prepared dataset under `data_dir`; built from DEBIAN_DIR when it is installed there."""
  builder = SenetFashionMnist(data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return builder
  if os.path.isdir(DEBIAN_DIR):
    return build(data_dir, DEBIAN_DIR)
  raise ValueError(f'config.dataset={NAME!r} is not prepared in config.data_dir='
                   f'{builder.data_dir!r} and {DEBIAN_DIR} does not exist: run {INSTALL_HINT}')


def main(argv=None) -> int:
  """`python -m senet_jax.data.fashion_mnist`: builds the dataset, prints where and its sizes."""
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--idx_dir', default=DEBIAN_DIR, help='directory of the four idx files')
  p.add_argument('--data_dir', default=None, help='TFDS data_dir (default: ~/tensorflow_datasets)')
  args = p.parse_args(argv)
  try:
    builder = build(args.data_dir, args.idx_dir)
  except (OSError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f'{NAME} prepared in {builder.data_dir}: {sizes}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
