"""The Grain input backend (config.input_backend='grain'): TensorFlow-free decode, crops and
augmentations checked against the tf.data path and by hand; order, resume, sharding, padding."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import default
from senet_jax.data import (augment, augment_ops, augment_table, grain_pipeline, image_ops,
                            preprocess, sources)
from senet_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photo_jpeg(width, height, seed, texture=20):
  """A smooth random image with noise (JPEG-compressed like a photo), quality 90."""
  rng = np.random.RandomState(seed)
  low = rng.randint(0, 255, (height // 25 + 1, width // 25 + 1, 3), np.uint8)
  image = np.asarray(Image.fromarray(low).resize((width, height), Image.BILINEAR), np.int16)
  image = np.clip(image + rng.randint(-texture, texture + 1, image.shape), 0, 255)
  buf = io.BytesIO()
  Image.fromarray(image.astype(np.uint8)).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def small_source(n=24, classes=None):
  """n tiny JPEGs whose label is their index (so a batch's labels name its records)."""
  return sources.InMemorySource([{'image': photo_jpeg(48, 40, i), 'label': i} for i in range(n)])


def grain_config(**kw):
  c = default.get_config()
  c.update(dict(input_backend='grain', num_classes=24, image_size=32, batch_size=4,
                interpolation='bilinear', seed=3))
  c.update(kw)
  return c


@pytest.mark.parametrize('method', ['bilinear', 'bicubic'])
def test_eval_preprocessing_matches_tfdata_on_jpegs(method):
  for data in (photo_jpeg(500, 375, 0), photo_jpeg(333, 500, 1)):
    mine = image_ops.eval_image(image_ops.decode(data), 224, method)
    # simplejpeg decodes with TF's decode_jpeg defaults (fast integer DCT, fancy upsampling):
    # bitwise the tf.data path's pixels.
    decoded = preprocess.decode_image(tf.constant(data))
    np.testing.assert_array_equal(image_ops.decode(data), decoded.numpy())
    # Same decoded pixels: crop + resize agree with the tf.data path to float rounding.
    np.testing.assert_allclose(mine, preprocess.eval_image(decoded, 224, method).numpy(),
                               atol=1e-3)
    # Pillow (the fallback for what simplejpeg refuses) is libjpeg's accurate integer DCT:
    # bitwise TF's INTEGER_ACCURATE.
    accurate = tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE')
    np.testing.assert_array_equal(image_ops._pillow_decode(data), accurate.numpy())


@pytest.mark.parametrize('kind', ['jpeg_gray', 'jpeg_cmyk', 'png', 'jpeg_truncated'])
def test_decode_handles_imagenet_oddities_as_tfdata_does(kind):
  """Grayscale, CMYK, PNG and truncated JPEGs: the tf.data decoder's pixels, bit for bit but
  for the DCT difference where Pillow takes over (truncated JPEGs)."""
  smooth = np.asarray(Image.open(io.BytesIO(photo_jpeg(64, 48, 2))).convert('RGB'))
  image = Image.fromarray(smooth if kind != 'jpeg_gray' else smooth[..., 0])
  buf = io.BytesIO()
  image.convert('CMYK' if kind == 'jpeg_cmyk' else image.mode).save(
      buf, format='PNG' if kind == 'png' else 'JPEG', quality=90)
  data = buf.getvalue()
  if kind == 'jpeg_truncated':
    full = photo_jpeg(128, 128, 3)
    data = full[:len(full) * 2 // 3]
  mine = image_ops.decode(data)
  theirs = preprocess.decode_image(tf.constant(data)).numpy()
  assert mine.shape == theirs.shape and mine.dtype == np.uint8
  diff = np.abs(mine.astype(int) - theirs)
  if kind != 'jpeg_truncated':  # libjpeg-turbo with TF's settings (CMYK: TF's formula)
    assert diff.max() == 0
  else:  # Pillow's accurate DCT against TF's fast one on the rows both recovered
    assert diff[:64].mean() <= 1.1 and diff[:64].max() <= 6
    # what neither could decode is the same grey in both
    assert diff[112:].max() == 0 and (mine[112:] == 128).all()


def gradient_image(height=200, width=250):
  """R = column, G = row: a pixel's value says where it came from."""
  cols, rows = np.meshgrid(np.arange(width), np.arange(height))
  return np.stack([cols, rows, np.zeros_like(cols)], -1).astype(np.uint8)


def test_random_resized_crop_geometry_by_hand():
  image, size = gradient_image(), 40
  for seed in range(20):
    top, left, h, w = image_ops.random_crop_window(np.random.default_rng(seed), 200, 250)
    assert 0.1 * 200 * 250 <= h * w <= 200 * 250 and 0 <= top <= 200 - h and 0 <= left <= 250 - w
    if (h, w) != (200, 250):
      assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    out = image_ops.train_image(image, np.random.default_rng(seed), size, 'bilinear', flip=False)
    if (h, w) == (200, 250):
      continue  # the eval center crop fallback
    # Linear interpolation of a ramp is exact: output column j samples input column
    # left + (j + 0.5) * w / size - 0.5, clamped to the crop (half-pixel centres).
    j = np.arange(size)
    expect_x = left + np.clip((j + 0.5) * w / size - 0.5, 0, w - 1)
    expect_y = top + np.clip((j + 0.5) * h / size - 0.5, 0, h - 1)
    np.testing.assert_allclose(out[0, :, 0], expect_x, atol=0.01)
    np.testing.assert_allclose(out[:, 0, 1], expect_y, atol=0.01)


def test_flip_mirrors_the_same_crop_half_the_time():
  image, flipped = gradient_image(), 0
  for seed in range(16):
    plain = image_ops.train_image(image, np.random.default_rng(seed), 32, flip=False)
    maybe = image_ops.train_image(image, np.random.default_rng(seed), 32, flip=True)
    if np.array_equal(maybe, plain[:, ::-1]):
      flipped += 1
      assert maybe[0, 0, 0] > maybe[0, -1, 0]  # columns now decrease left to right
    else:
      np.testing.assert_array_equal(maybe, plain)
  assert 3 <= flipped <= 13


@pytest.mark.parametrize('name', augment_table.RANDAUGMENT_OPS)
def test_each_op_equals_the_tfdata_op(name):
  """Given the same argument, augment_ops returns augment.py's pixels exactly."""
  image = np.asarray(Image.open(io.BytesIO(photo_jpeg(57, 43, 5))).convert('RGB'))
  for level in (0, 2.5, 7, 10):
    frac = np.float32(level) / np.float32(augment_table.MAX_LEVEL)
    arg = augment_table.argument(name, frac, augment_table.RANDAUGMENT_CONSTS)
    for sign in ((1, -1) if name in augment_table.SIGNED else (1,)):
      arg_s = arg if arg is None else np.float32(sign) * arg
      if name == 'Cutout':  # the centre is random: by hand
        out = augment_ops.cutout(image, int(arg_s), (10, 50))
        hit = np.zeros(image.shape[:2], bool)
        s = int(arg_s)
        hit[max(10 - s, 0):10 + s + 1, max(50 - s, 0):50 + s + 1] = True
        assert (out[hit] == 128).all() and np.array_equal(out[~hit], image[~hit])
        continue
      mine = augment_ops.apply_with_argument(name, image, arg_s)
      t = tf.constant(image)
      if name == 'Rotate':
        ref = augment._rotate(t, tf.constant(arg_s))
      elif name in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
        m = {'ShearX': [1, arg_s, 0, 0, 1, 0], 'ShearY': [1, 0, 0, arg_s, 1, 0],
             'TranslateX': [1, 0, -arg_s, 0, 1, 0], 'TranslateY': [1, 0, 0, 0, 1, -arg_s]}[name]
        ref = augment._transform(t, tf.constant(m + [0, 0], tf.float32))
      else:
        ref = augment.apply_op(name, t, tf.constant(level, tf.float32),
                               tf.constant([1, 2], tf.int64), translate_const=100.0,
                               cutout_const=40)
      np.testing.assert_array_equal(mine, ref.numpy(), err_msg=f'{name} level {level}')


def batches(config, source, start=0, count=3, **kw):
  it = grain_pipeline.TrainIterator(config, source, start_step=start, num_threads=2, **kw)
  return [next(it) for _ in range(count)], it


@pytest.mark.parametrize('kw', [dict(augment='randaugment'),
                                dict(augment='autoaugment', mixup_alpha=0.2, cutmix_alpha=1.0)])
def test_order_determinism_and_resume(kw):
  config, source = grain_config(**kw), small_source()
  first, it = batches(config, source, count=5)
  again, _ = batches(config, source, count=5)
  resumed, _ = batches(config, source, start=3, count=2)
  for a, b in zip(first + first[3:], again + resumed):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])
  assert it.next_step == 5 and first[0]['image'].shape == (4, 32, 32, 3)
  if 'mixup_alpha' not in kw:  # labels are record indices: the shared (seed, step) order
    for step, batch in enumerate(first):
      positions = sources.train_positions(step, 4, 0, 1)
      np.testing.assert_array_equal(batch['label'],
                                    sources.example_indices(3, positions, len(source)))
  else:
    np.testing.assert_allclose(first[0]['label'].sum(-1), 1.0, rtol=1e-6)


def test_worker_processes_give_the_same_batches():
  # Grain's mp_prefetch: batches decoded in 2 worker processes, delivered round-robin.
  config, source = grain_config(augment='randaugment'), small_source()
  threads, _ = batches(config, source, count=3)
  workers, _ = batches(config, source, count=3, num_workers=2)
  for a, b in zip(threads, workers):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])


def test_two_processes_split_the_one_process_batch():
  config, source = grain_config(augment='randaugment'), small_source()
  whole, _ = batches(config, source, count=2)
  halves = [batches(config, source, count=2, process_index=p, process_count=2)[0]
            for p in range(2)]
  for step in range(2):
    for key in ('image', 'label'):
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, whole[step][key])
    assert not set(halves[0][step]['label']) & set(halves[1][step]['label'])


def test_eval_counts_every_example_once_with_padding():
  source = small_source(n=10)
  prep = image_ops.Preprocessing(32, 1.0, 'bicubic', (0.0,) * 3, (1.0,) * 3,
                                 input_backend='grain')
  seen, lengths = [], set()
  for pid in range(3):
    local = list(grain_pipeline.eval_iterator(source, prep, 6, 24, process_index=pid,
                                              process_count=3, num_threads=1))
    lengths.add(len(local))
    for b in local:
      seen += [int(l) for l, m in zip(b['label'], b['mask']) if m == 1]
  assert sorted(seen) == list(range(10)) and lengths == {2}  # ceil(ceil(10/3) / 2)


def test_a_record_with_a_resize_method_grain_lacks_evaluates_on_tfdata():
  """The tools evaluate a stored record on grain by default; a method only tf.data has (area)
  runs there instead of failing (a training config is refused before compute)."""
  from senet_jax.data import pipeline
  source = small_source(n=4)
  prep = image_ops.Preprocessing(32, 1.0, 'area', (0.0,) * 3, (1.0,) * 3)
  assert prep.input_backend == 'grain'
  routed = next(pipeline.eval_iterator(source, prep, 4, 24))
  tfdata = image_ops.Preprocessing(32, 1.0, 'area', (0.0,) * 3, (1.0,) * 3,
                                   input_backend='tfdata')
  np.testing.assert_array_equal(routed['image'],
                                next(pipeline.eval_iterator(source, tfdata, 4, 24))['image'])
  config = grain_config(interpolation='area')
  with pytest.raises(ConfigError, match=r"config.interpolation='area' is not on "
                                        r"input_backend='grain'.*--config.input_backend=tfdata"):
    grain_pipeline.check_interpolation(config.interpolation)


def test_undecodable_images_are_masked_and_counted():
  records = small_source(n=8).records
  records[5] = {'image': b'\xff\xd8 not a jpeg', 'label': 5}
  config = grain_config(num_classes=8)
  got, it = batches(config, sources.InMemorySource(records), count=2)
  labels = np.concatenate([b['label'] for b in got])
  masks = np.concatenate([b['mask'] for b in got])
  assert sorted(labels) == list(range(8))  # one epoch of 8 in two batches of 4
  assert masks[labels == 5] == 0 and masks.sum() == 7 and it.num_skipped == 1


def test_grain_path_imports_no_tensorflow(digits_dir):
  code = (
      'import sys\n'
      'from configs import quickstart\n'
      'from senet_jax.data import grain_pipeline, image_ops, sources\n'
      f'c = quickstart.get_config(); c.update(dict(data_dir={digits_dir!r}, '
      'input_backend="grain", augment="randaugment"))\n'
      'train = sources.open_source(c.dataset, c.train_split, c.data_dir)\n'
      'test = sources.open_source(c.dataset, c.eval_split, c.data_dir)\n'
      'next(grain_pipeline.TrainIterator(c, train))\n'
      'prep = image_ops.Preprocessing.from_config(c)\n'
      'n = sum(b["mask"].sum() for b in grain_pipeline.eval_iterator(test, prep, 120, 10))\n'
      'assert n == len(test), n\n'
      'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n'
      # The trainer imports the tf.data backend only when it builds a tf.data iterator.
      'from senet_jax.training import trainer\n'
      'assert "tensorflow" not in sys.modules, "the trainer imports TensorFlow"\n')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]


def test_trainer_learns_digits_on_grain(digits_dir, tmp_path):
  import train
  from test_train import tiny_config
  config = tiny_config(digits_dir, input_backend='grain', num_train_steps=60,
                       learning_rate=0.4, warmup_epochs=0.0, ema_decay=0.0,
                       checkpoint_every_steps=60, log_every_steps=30)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['num_examples'] == 359 and results['top1'] >= 0.6  # chance: 0.1


def test_digits_are_built_with_tf_image_resize_pixels_without_tensorflow():
  """The offline datasets' builders run without TensorFlow (issue 33): the digits' bilinear
  upscaling is tf.image.resize's, bit for bit, at every stored resolution."""
  from sklearn.datasets import load_digits

  from senet_jax.data import digits
  gray = load_digits().images.astype(np.float32) * (255.0 / 16.0)
  for resolution in (16, 32, 64):
    reference = tf.image.resize(gray[..., None], (resolution, resolution), method='bilinear')
    reference = np.clip(np.round(reference.numpy()), 0, 255).astype(np.uint8)
    images, labels = digits.load_images(resolution)
    assert images.shape == (1797, resolution, resolution, 3) and labels.shape == (1797,)
    np.testing.assert_array_equal(images, np.repeat(reference, 3, axis=-1))
  png = image_ops.encode_png(images[5])  # what the builder hands TFDS: lossless
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), images[5])
