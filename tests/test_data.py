"""Input pipeline: decoding, official crops, augmentations, sharding, padding, resumption."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import default
from senet_jax.data import augment, digits, pipeline, preprocess


def digits_config(data_dir, **kw):
  c = default.get_config()
  c.update(dict(dataset='senet_digits', data_dir=data_dir, train_split='train',
                eval_split='test', num_classes=10, image_size=32, batch_size=32,
                eval_batch_size=50, eval_crop_fraction=1.0, crop_area_range=(0.5, 1.0),
                random_flip=False))
  c.update(kw)
  return c


def encode(array, fmt='PNG'):
  buf = io.BytesIO()
  image = array if isinstance(array, Image.Image) else Image.fromarray(array)
  image.save(buf, format=fmt)
  return buf.getvalue()


def test_digits_builds_offline_with_sizes_and_classes(digits_dir):
  builder = digits.build(digits_dir, 32)
  splits = builder.info.splits
  assert splits['train'].num_examples + splits['test'].num_examples == 1797
  assert splits['test'].num_examples == 359  # 20% of each class, rounded
  assert builder.info.features['label'].num_classes == 10
  source = pipeline.open_source('senet_digits', 'test', digits_dir)
  image = tf.io.decode_png(source[0]['image']).numpy()
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_center_crop_window_by_hand():
  # 100x60, res 32 -> fraction 32/64 = 0.5 of the short side: 30 px at (35, 15).
  top, left, size = preprocess.center_crop_window(100, 60, 32)
  assert (int(top), int(left), int(size)) == (35, 15, 30)
  top, left, size = preprocess.center_crop_window(256, 256, 224)  # 224/256 of 256 = 224
  assert (int(top), int(left), int(size)) == (16, 16, 224)


def test_eval_image_keeps_exactly_the_center_crop():
  image = np.zeros((100, 60, 3), np.uint8)
  image[35:65, 15:45] = 200
  decoded = preprocess.decode_image(tf.constant(encode(image)))
  out = preprocess.eval_image(decoded, 32, 'bilinear').numpy()
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out, 200.0, atol=1e-3)  # any border pixel would pull it down


def test_train_image_shape_range_and_determinism():
  image = tf.constant(np.random.RandomState(0).randint(0, 255, (80, 120, 3), np.uint8))
  seed = tf.constant([1, 2], tf.int64)
  a = preprocess.train_image(image, seed, 48).numpy()
  b = preprocess.train_image(image, seed, 48).numpy()
  c = preprocess.train_image(image, tf.constant([1, 3], tf.int64), 48).numpy()
  assert a.shape == (48, 48, 3) and a.dtype == np.float32
  assert a.min() >= 0 and a.max() <= 255
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  norm = preprocess.normalize(tf.constant(a), (127.5,) * 3, (127.5,) * 3, tf.bfloat16)
  assert norm.dtype == tf.bfloat16 and -1.01 <= float(tf.reduce_min(norm))


@pytest.mark.parametrize('kind', ['jpeg_rgb', 'jpeg_gray', 'jpeg_cmyk', 'png_named_jpeg',
                                  'jpeg_truncated'])
def test_decode_handles_imagenet_oddities(kind):
  rgb = np.zeros((40, 30, 3), np.uint8)
  rgb[..., 0] = 200
  if kind == 'jpeg_rgb':
    data, expect = encode(rgb, 'JPEG'), (200, 0, 0)
  elif kind == 'jpeg_gray':
    data, expect = encode(np.full((40, 30), 90, np.uint8), 'JPEG'), (90, 90, 90)
  elif kind == 'jpeg_cmyk':
    cmyk = Image.fromarray(rgb).convert('CMYK')
    data, expect = encode(cmyk, 'JPEG'), (200, 0, 0)
  elif kind == 'png_named_jpeg':
    data, expect = encode(rgb, 'PNG'), (200, 0, 0)
  else:
    big = np.random.RandomState(0).randint(0, 255, (128, 128, 3), np.uint8)
    full = encode(big, 'JPEG')
    data, expect = full[:len(full) * 2 // 3], None
  assert pipeline.image_is_readable(data)
  out = preprocess.decode_image(tf.constant(data)).numpy()
  assert out.shape[2] == 3 and out.dtype == np.uint8
  if expect is not None:
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expect, atol=6)


@pytest.mark.parametrize('data', [b'', b'not an image at all', b'\xff\xd8\xff\xe0garbage'])
def test_unreadable_bytes_are_detected(data):
  assert not pipeline.image_is_readable(data)


def test_same_seed_same_batches_and_exact_resume(digits_dir):
  config = digits_config(digits_dir, augment='randaugment')
  source = pipeline.open_source('senet_digits', 'train', digits_dir)
  run = pipeline.TrainIterator(config, source)
  batches = [next(run) for _ in range(6)]
  again = pipeline.TrainIterator(config, source)
  np.testing.assert_array_equal(next(again)['image'], batches[0]['image'])
  resumed = pipeline.TrainIterator(config, source, start_step=4)
  b4 = next(resumed)
  np.testing.assert_array_equal(b4['image'], batches[4]['image'])
  np.testing.assert_array_equal(b4['label'], batches[4]['label'])
  assert resumed.next_step == 5
  other_seed = pipeline.TrainIterator(digits_config(digits_dir, seed=1), source)
  assert not np.array_equal(next(other_seed)['label'], batches[0]['label'])


def test_two_processes_read_disjoint_examples_covering_the_epoch():
  n, global_batch = 100, 20
  seen = []
  for pid in (0, 1):
    gen = pipeline._train_index_batches(7, n, 0, global_batch, pid, 2)
    seen.append(np.concatenate([idx for _, (_, idx) in zip(range(5), gen.as_numpy_iterator())]))
  assert len(set(seen[0]) & set(seen[1])) == 0
  assert sorted(np.concatenate(seen)) == list(range(n))
  # The next epoch is a different permutation.
  gen = pipeline._train_index_batches(7, n, 5, global_batch, 0, 2)
  assert not np.array_equal(next(gen.as_numpy_iterator())[1], seen[0][:10])


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_eval_counts_every_example_exactly_once(digits_dir, process_count):
  config = digits_config(digits_dir, eval_batch_size=48)
  source = pipeline.open_source('senet_digits', 'test', digits_dir)
  expected = np.bincount([int(r['label']) for r in source.__getitems__(range(len(source)))],
                         minlength=10)
  counts, steps = np.zeros(10), []
  for pid in range(process_count):
    batches = list(pipeline.eval_iterator(
        source, preprocess.Preprocessing.from_config(config), config.eval_batch_size,
        config.num_classes, process_index=pid, process_count=process_count))
    steps.append(len(batches))
    for b in batches:
      counts += np.bincount(b['label'], weights=b['mask'], minlength=10)
  np.testing.assert_array_equal(counts, expected)
  assert len(set(steps)) == 1  # every process runs the same number of batches


def test_batch_size_must_divide_devices():
  with pytest.raises(ValueError, match='batch_size=30.*device count \\(8\\)'):
    pipeline.check_batch_size(30, 8, 1)
  assert pipeline.check_batch_size(32, 8, 2) == 16


def test_unknown_dataset_and_split_are_named(digits_dir):
  with pytest.raises(ValueError, match='config.dataset=.no_such_dataset'):
    pipeline.open_source('no_such_dataset', 'train', digits_dir)
  with pytest.raises(ValueError, match="split 'validation'"):
    pipeline.open_source('senet_digits', 'validation', digits_dir)


def test_label_out_of_range_names_the_example():
  png = encode(np.zeros((8, 8, 3), np.uint8))
  source = pipeline.InMemorySource([{'image': png, 'label': 1}, {'image': png, 'label': 12}])
  config = digits_config('', num_classes=10, batch_size=2)
  with pytest.raises(Exception, match='example 1 has label 12'):
    next(pipeline.TrainIterator(config, source))


def test_corrupt_images_are_masked_and_counted():
  png = encode(np.full((8, 8, 3), 50, np.uint8))
  source = pipeline.InMemorySource([{'image': png, 'label': 1}, {'image': b'', 'label': 2},
                       {'image': png[:10], 'label': 3}, {'image': png, 'label': 4}])
  config = digits_config('', batch_size=4, image_size=8)
  it = pipeline.TrainIterator(config, source)
  batch = next(it)
  order = pipeline.epoch_permutation(config.seed, 0, 4)
  expected_mask = [1.0 if i in (0, 3) else 0.0 for i in order]
  np.testing.assert_array_equal(batch['mask'], expected_mask)
  assert it.num_skipped == 2
  next(it)
  assert it.num_skipped == 4


def test_augmentations_keep_shape_dtype_and_change_the_image():
  image = tf.constant(np.random.RandomState(0).randint(0, 255, (32, 32, 3), np.uint8))
  for seed in range(3):
    s = tf.constant([seed, 0], tf.int64)
    for out in (augment.autoaugment(image, s), augment.randaugment(image, s, 2, 10)):
      assert out.shape == image.shape and out.dtype == tf.uint8
  changed = [not np.array_equal(augment.randaugment(image, tf.constant([s, 1], tf.int64), 3, 9),
                                image) for s in range(6)]
  assert any(changed)


def test_augment_ops_by_hand():
  image = tf.constant([[[0, 100, 250]]], tf.uint8)
  s = tf.constant([0, 0], tf.int64)
  np.testing.assert_array_equal(augment.apply_op('Invert', image, 0, s), [[[255, 155, 5]]])
  # Solarize at level 5: threshold 128 -> values >= 128 inverted.
  np.testing.assert_array_equal(augment.apply_op('Solarize', image, 5, s), [[[0, 100, 5]]])
  # Posterize level 10: 4 bits kept (official: int(10 / 10 * 4) bits -> shift 4).
  np.testing.assert_array_equal(augment.apply_op('Posterize', image, 10, s), [[[0, 96, 240]]])
  gray = tf.constant(np.tile(np.arange(4, dtype=np.uint8)[None, :, None] * 50, (2, 1, 3)))
  # AutoContrast stretches [0, 150] to [0, 255].
  np.testing.assert_array_equal(augment.apply_op('AutoContrast', gray, 0, s)[0, :, 0],
                                [0, 85, 170, 255])


@pytest.mark.parametrize('mixup,cutmix', [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_labels_sum_to_one(mixup, cutmix):
  images = tf.constant(np.random.RandomState(0).randn(8, 16, 16, 3).astype(np.float32))
  labels = tf.one_hot(np.arange(8) % 5, 5)
  out, mixed = augment.mix_batch(images, labels, tf.constant([3, 4], tf.int64), mixup, cutmix)
  np.testing.assert_allclose(tf.reduce_sum(mixed, 1), 1.0, rtol=1e-6)
  assert out.shape == images.shape
  assert not np.allclose(mixed, labels)


def test_pipeline_yields_mixed_soft_labels(digits_dir):
  config = digits_config(digits_dir, mixup_alpha=0.4)
  source = pipeline.open_source('senet_digits', 'train', digits_dir)
  batch = next(pipeline.TrainIterator(config, source))
  assert batch['label'].shape == (32, 10)
  np.testing.assert_allclose(batch['label'].sum(1), 1.0, rtol=1e-6)
