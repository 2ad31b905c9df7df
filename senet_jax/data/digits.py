"""`senet_digits`: scikit-learn's 1,797 handwritten 8x8 digits as an offline TFDS dataset.

It needs no download (the images ship inside scikit-learn), so the quickstart and the
integration tests run the very same pipeline code as ImageNet. Images are upscaled
(bilinear) to the config's resolution, made RGB and PNG-encoded; the split is a fixed,
stratified 80/20 train/test split.

    python -c "from senet_jax.data import digits; digits.build(data_dir='~/tensorflow_datasets')"

or simply point a config at `dataset='senet_digits'`: the pipeline builds it on first use.

One test-split digit as a PNG file (an input for the tools `senet_jax.tools.cam` and `predict`):

    python -m senet_jax.data.digits digit.png                  # test digit 0, 64 px
    python -m senet_jax.data.digits seven.png --index=5 --resolution=128
"""
from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import tensorflow_datasets as tfds

from senet_jax.data import image_ops

NAME = 'senet_digits'
NUM_CLASSES = 10
TEST_FRACTION = 0.2


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  """Builder config: the side length of the stored (upscaled) images."""
  resolution: int = 32


def _configs():
  return [DigitsConfig(name=f'r{r}', resolution=r, description=f'{r}x{r} RGB')
          for r in (16, 32, 64)]


class SenetDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits upscaled to RGB images, built offline."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = _configs()

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(r, r, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        description='scikit-learn handwritten digits (UCI optdigits test set), upscaled.')

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    images, labels = load_images(self.builder_config.resolution)
    train_idx, test_idx = stratified_split(labels)
    return {'train': self._generate_examples(images, labels, train_idx),
            'test': self._generate_examples(images, labels, test_idx)}

  def _generate_examples(self, images, labels, indices):
    # PNG bytes, not arrays: TFDS encodes arrays with TensorFlow, bytes it stores as they are.
    for i in indices:
      yield int(i), {'image': io.BytesIO(image_ops.encode_png(images[i])), 'label': int(labels[i])}

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
  # prepared" for every dataset it builds; nothing is downloaded here (build() says what it does).
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def load_images(resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 RGB images of `resolution` pixels, and their labels.

  Upscaled as tf.image.resize(method='bilinear') does (image_ops.resize reproduces it; the
  dataset's pixels are the same as when TensorFlow built it, tested), without TensorFlow.
  """
  from sklearn.datasets import load_digits
  digits = load_digits()
  gray = digits.images.astype(np.float32) * (255.0 / 16.0)  # values are 0..16
  resized = np.stack([image_ops.resize(g[..., None], resolution, 'bilinear') for g in gray])
  rgb = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
  return rgb, digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int = 0):
  """Fixed stratified split: TEST_FRACTION of every class goes to 'test'."""
  rng = np.random.RandomState(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(len(idx) * TEST_FRACTION))
    test.extend(idx[:n_test])
    train.extend(idx[n_test:])
  return np.sort(train), np.sort(test)


def build(data_dir: str | None = None, resolution: int = 32) -> tfds.core.DatasetBuilder:
  """Builds (once) and returns the digits dataset in ArrayRecord format under `data_dir`.

  The first build logs one line (no download: the images ship with scikit-learn) and shows
  no TFDS progress bars; later calls only open it.
  """
  from senet_jax.utils import quiet
  with quiet.absl_messages(quiet.TFDS_NOT_PREPARED):  # not yet: it is built below
    builder = SenetDigits(config=f'r{resolution}', data_dir=data_dir,
                          file_format='array_record')
    prepared = builder.is_prepared()
  if not prepared:
    logging.info('building the %s dataset from scikit-learn (no download) in %s', NAME,
                 builder.data_dir)
    from tensorflow_datasets.core.utils import tqdm_utils
    bars = getattr(tqdm_utils, '_active', True)  # TFDS has no public getter
    tfds.display_progress_bar(False)
    try:
      builder.download_and_prepare()
    finally:
      tfds.display_progress_bar(bars)
  return builder


def write_png(path: str, index: int = 0, resolution: int = 64) -> int:
  """Writes the `index`-th digit of the test split (as the dataset stores it at `resolution`)
  to the PNG file `path`; returns its label."""
  images, labels = load_images(resolution)
  _, test = stratified_split(labels)
  if not 0 <= index < len(test):
    raise ValueError(f'--index={index}: the test split has {len(test)} digits (0..{len(test) - 1})')
  with open(path, 'wb') as f:
    f.write(image_ops.encode_png(images[test[index]]))
  return int(labels[test[index]])


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  import sys
  from senet_jax.utils import cli
  p = cli.parser(__doc__, prog='python -m senet_jax.data.digits')
  p.add_argument('output', help='PNG file to write')
  p.add_argument('--index', type=int, default=0, help='which digit of the test split')
  p.add_argument('--resolution', type=int, default=64, help='side in pixels (RGB)')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  def write(a):
    label = write_png(a.output, a.index, a.resolution)
    print(f'wrote {a.output}: test digit {a.index} (label {label}), {a.resolution}x{a.resolution}')
  return cli.run(write, args)


if __name__ == '__main__':
  raise SystemExit(main())
