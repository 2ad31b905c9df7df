"""Fashion-MNIST evidence: the idx reader, the offline TFDS builder (on idx files the test
writes, so the Debian package is not needed), the ablation sweeps and the results table, which
is regenerated from CSV files alone."""
import csv
import json
import gzip
import importlib.util
import os
import statistics
import sys

import numpy as np
import pytest

from senet_jax.data import fashion_mnist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import ablation_table  # noqa: E402

N_TRAIN, N_TEST = 200, 100
SWEEP_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'sweeps',
                          'fashion_mnist.py')


def _images(n, seed):
  """n distinct 28x28 images whose label is the column of a bright bar (learnable), + noise."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 10
  images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
  for i, label in enumerate(labels):
    images[i, :, 2 + 2 * label:4 + 2 * label] = 250
  return images, labels.astype(np.uint8)


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
  """(idx_dir, data_dir, {split: (images, labels)}): generated idx files, built as TFDS."""
  root = tmp_path_factory.mktemp('fashion')
  idx_dir, data_dir = str(root / 'idx'), str(root / 'tfds')
  os.makedirs(idx_dir)
  splits = {'train': _images(N_TRAIN, 0), 'test': _images(N_TEST, 1)}
  for split, (images, labels) in splits.items():
    suffix = '.gz' if split == 'train' else ''  # both layouts the Debian/upstream files use
    image_file, label_file = fashion_mnist.FILES[split]
    fashion_mnist.write_idx(os.path.join(idx_dir, image_file + suffix), images)
    fashion_mnist.write_idx(os.path.join(idx_dir, label_file + suffix), labels)
  fashion_mnist.build(data_dir, idx_dir)
  return idx_dir, data_dir, splits


def test_idx_format_by_hand(tmp_path):
  path = str(tmp_path / 'a-idx2-ubyte')
  fashion_mnist.write_idx(path, np.array([[1, 2, 3], [4, 5, 255]], np.uint8))
  # 00 00, type 0x08 (uint8), 2 dims; dims big-endian 2 and 3; then the bytes row-major.
  assert open(path, 'rb').read() == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3,
                                            1, 2, 3, 4, 5, 255])
  with gzip.open(str(tmp_path / 'b.gz'), 'wb') as f:
    f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
  assert fashion_mnist.read_idx(str(tmp_path / 'b.gz')).tolist() == [7, 8, 9]
  with open(tmp_path / 'short', 'wb') as f:
    f.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 7, 8]))  # says 5 labels, holds 2
  with pytest.raises(ValueError, match=r'short: header says shape \(5,\).*truncated'):
    fashion_mnist.read_idx(str(tmp_path / 'short'))
  with open(tmp_path / 'png', 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n')
  with pytest.raises(ValueError, match='png: not an idx file'):
    fashion_mnist.read_idx(str(tmp_path / 'png'))


def test_built_dataset_holds_every_image_padded_with_its_label(fashion):
  import io
  from PIL import Image
  from senet_jax.data import pipeline
  _, data_dir, splits = fashion
  for split, (images, labels) in splits.items():
    source = pipeline.open_source('senet_fashion_mnist', split, data_dir)
    assert len(source) == len(images)
    expected = {img.tobytes(): int(label) for img, label in zip(images, labels)}
    seen = set()
    for record in source.__getitems__(list(range(len(source)))):
      stored = np.array(Image.open(io.BytesIO(record['image'])))
      assert stored.shape == (32, 32)  # 28 + 2 x 2 black pixels
      assert not stored[:2].any() and not stored[-2:].any() and not stored[:, :2].any()
      inner = stored[2:30, 2:30].tobytes()
      assert expected[inner] == int(record['label'])
      seen.add(inner)
    assert seen == set(expected)  # every image once


def test_missing_dataset_and_idx_files_fail_with_one_line(tmp_path, monkeypatch, capsys):
  from senet_jax.data import pipeline
  monkeypatch.setattr(fashion_mnist, 'DEBIAN_DIR', str(tmp_path / 'not-installed'))
  with pytest.raises(ValueError, match='is not prepared.*make data-fashion'):
    pipeline.open_source('senet_fashion_mnist', 'train', str(tmp_path / 'tfds'))
  assert fashion_mnist.main([f'--idx_dir={tmp_path}', f'--data_dir={tmp_path / "t"}']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and 'train-images-idx3-ubyte[.gz] does not exist' in err
  assert len(err.splitlines()) == 1


def test_ablation_points_and_paper_orderings_name_the_same_points():
  from senet_jax.tools import sweep
  sweep.load_sweep(f'{SWEEP_FILE}:se')  # puts the repository root on sys.path
  spec = importlib.util.spec_from_file_location('fashion_sweeps', SWEEP_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert set(module.ABLATIONS) == set(ablation_table.PAPER)
  for name, paper in ablation_table.PAPER.items():
    _, points, _, _ = sweep.load_sweep(f'configs/sweeps/fashion_mnist.py:{name}')
    names = {sweep.point_name(p) for p in points}
    assert paper['best'] <= names and paper['worst'] <= names and set(paper['err']) <= names
  with pytest.raises(ValueError, match="variant 'quick'"):
    sweep.load_sweep('configs/sweeps/fashion_mnist.py:quick')


def test_se_adds_the_papers_parameter_count():
  from senet_jax.tools import sweep
  config, points, _, _ = sweep.load_sweep('configs/sweeps/fashion_mnist.py:se')
  counts = [sweep.count_params(c.model, 10, c.model_kwargs, 32)
            for c in (sweep.apply_point(config, p) for p in points)]
  # Per SE block 2 C^2 / r weights + C / r + C biases; r = 4, two blocks of C = 16, 32, 64.
  expected = sum(2 * (2 * c * c // 4 + c // 4 + c) for c in (16, 32, 64))
  assert expected == 5656 and counts[0] - counts[1] == expected


def _rows(ablation, values):
  """CSV rows: {point: [top-1 per seed]}."""
  return [dict(ablation=ablation, point=point, seed=seed, finished=True, params=1000, step=10,
               top1=v, top5=1.0, ema_top1=None, loss=0.5, seconds=60.0)
          for point, vs in values.items() for seed, v in enumerate(vs)]


def test_agreement_with_the_papers_ordering():
  def verdict(values):
    return ablation_table.agreement('se_gate', ablation_table.point_rows(_rows('se_gate', values)))
  # std 0.005 each; a 0.10 gap is 10 std apart.
  assert verdict({'se_gate=sigmoid': [.90, .91], 'se_gate=tanh': [.85, .86],
                  'se_gate=relu': [.80, .81]}) == 'agrees'
  assert verdict({'se_gate=sigmoid': [.80, .81], 'se_gate=tanh': [.85, .86],
                  'se_gate=relu': [.90, .91]}) == 'disagrees'
  assert verdict({'se_gate=sigmoid': [.80, .85], 'se_gate=tanh': [.82, .81],
                  'se_gate=relu': [.83, .80]}) == 'not separated'
  assert verdict({'se_gate=sigmoid': [.90], 'se_gate=tanh': [.80]}).startswith('not separated')


def test_readme_summary_row_per_ablation_best_first(tmp_path):
  results = {'se_reduction': _rows('se_reduction', {
      'se_reduction=4.0': [.80, .82], 'se_reduction=16.0': [.90, .91]}),
      'se': _rows('se', {'se=True': [.9], 'se=False': [.8]})}
  lines = ablation_table.summary(results).splitlines()
  # 16: a paper best
  assert lines[2] == ('| se_reduction | 16 90.50 ± 0.71, 4 81.00 ± 1.41 | '
                      f'{ablation_table.PAPER["se_reduction"]["order"]} | agrees |')
  # one seed: no std, and no verdict beyond "not separated"
  assert lines[3].startswith('| se | True 90.00, False 80.00 | SE > no SE | not separated')
  readme = tmp_path / 'README.md'
  readme.write_text('top\n{}\nold\n{}\nbottom\n'.format(*ablation_table.SUMMARY_MARKERS))
  assert ablation_table.update_doc('new\n', str(readme), ablation_table.SUMMARY_MARKERS)
  assert readme.read_text() == 'top\n{}\nnew\n{}\nbottom\n'.format(
      *ablation_table.SUMMARY_MARKERS)


def _by_hand(path):
  """{point: (mean, sample std) of top-1 in %} straight from the CSV file."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  points = {}
  for r in rows:
    points.setdefault(r['point'], []).append(100 * float(r['top1']))
  return {p: (statistics.fmean(v), statistics.stdev(v)) for p, v in points.items()}


def test_tiny_sweep_end_to_end_then_table_from_its_csv(fashion, tmp_path):
  from senet_jax.tools import sweep
  _, data_dir, _ = fashion
  config, points, _, _ = sweep.load_sweep('configs/sweeps/fashion_mnist.py:se_gate')
  # One stage of one 8-channel block: the compile dominates, two per point (train, eval).
  config.model_kwargs.update(dict(stage_sizes=(1,), stage_planes=(8,), stem_width=8,
                                  se_stages=(2,)))
  config.update(dict(data_dir=data_dir, train_split='train', num_epochs=0.0, num_train_steps=2,
                     batch_size=20, eval_batch_size=50, checkpoint_every_steps=100))
  workdir, results = str(tmp_path / 'sweep'), str(tmp_path / 'results')
  sweep.run(config, points[:2], workdir, seeds=[0, 1])
  path = os.path.join(results, 'fashion_mnist_se_gate.csv')
  ablation_table.write_csv(path, ablation_table.run_rows('se_gate', points[:2], workdir))
  doc = tmp_path / 'evidence.md'
  doc.write_text(f'intro\n{ablation_table.MARKERS[0]}\nold\n{ablation_table.MARKERS[1]}\nend\n')
  readme = tmp_path / 'README.md'
  readme.write_text('{}\nold\n{}\n'.format(*ablation_table.SUMMARY_MARKERS))
  assert ablation_table.main([f'--results_dir={results}', f'--doc={doc}',
                              f'--readme={readme}']) == 0
  text = doc.read_text()
  assert text.startswith('intro\n') and text.endswith(f'{ablation_table.MARKERS[1]}\nend\n')
  assert 'old' not in text and 'paper: sigmoid > tanh > ReLU' in text
  stats = _by_hand(path)
  assert set(stats) == {'se_gate=sigmoid', 'se_gate=tanh'}
  for point, (mean, std) in stats.items():
    line = next(li for li in text.splitlines() if f'| {point} |' in li)
    assert f'| {mean:.2f} ± {std:.2f} | 2 |' in line  # 2 seeds
  row = next(li for li in readme.read_text().splitlines() if li.startswith('| se_gate |'))
  best, other = sorted(stats, key=lambda p: -stats[p][0])
  assert row.startswith('| se_gate | ' + ', '.join(
      f'{p.split("=")[1]} {stats[p][0]:.2f} ± {stats[p][1]:.2f}' for p in (best, other)))
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['point'], r['seed'], r['step'], r['finished']) for r in rows] == [
      ('se_gate=sigmoid', '0', '2', 'True'), ('se_gate=sigmoid', '1', '2', 'True'),
      ('se_gate=tanh', '0', '2', 'True'), ('se_gate=tanh', '1', '2', 'True')]


def test_a_run_shared_by_two_ablations_is_trained_once(tmp_path):
  # se=True and se_gate=sigmoid are both the base network (configs/fashion_mnist.py: SE on,
  # sigmoid gate): the same config and seed, so the finished one is copied into the other.
  source = tmp_path / 'se' / 'se=True' / 'seed=0'
  source.mkdir(parents=True)
  (source / 'eval_results.json').write_text('{"latest": {"top1": 0.5}}')
  (source / sweep_done_file()).write_text('{"seed": 0, "seconds": 9.0}')
  filled = ablation_table.reuse_identical_runs(['se', 'se_gate'], str(tmp_path), [0, 1])
  copy = tmp_path / 'se_gate' / 'se_gate=sigmoid' / 'seed=0'
  assert filled == [str(copy)]  # not tanh / relu, not seed 1, not se=False
  assert (copy / 'eval_results.json').read_text() == '{"latest": {"top1": 0.5}}'
  done = json.loads((copy / sweep_done_file()).read_text())
  assert done == {'seed': 0, 'seconds': 9.0, 'same_run_as': 'se/se=True/seed=0'}


def sweep_done_file():
  from senet_jax.tools import sweep
  return sweep.DONE_FILE


# ---- the published baselines (configs/fashion_mnist.py 'convnet' and 'resnet18') -------------
def _fashion_config(variant):
  spec = importlib.util.spec_from_file_location(
      'fashion_config', os.path.join(os.path.dirname(SWEEP_FILE), os.pardir, 'fashion_mnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


# Hand counts from the cited code, with our 3-channel input (the grey image repeated):
# benchmark/convnet.py: conv 5x5x3x32 + b, conv 5x5x32x64 + b, dense 7*7*64 x 1024 + b,
# dense 1024 x 10 + b.
CONVNET_PARAMS = (5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (
    1024 * 10 + 10)
# kefth model.py ResNet: conv 3x3x3x64 + BN; stage widths 64/128/256 of two basic blocks (two
# 3x3 convs + BN each; a 1x1 projection + BN where the width or stride changes); fc 256 x 10 + b.
_BLOCK = lambda cin, cout: 9 * cin * cout + 9 * cout * cout + 4 * cout + (  # noqa: E731
    cin * cout + 2 * cout if cin != cout else 0)
RESNET_PARAMS = (9 * 3 * 64 + 2 * 64) + sum(
    _BLOCK(cin, cout) + _BLOCK(cout, cout) for cin, cout in ((64, 64), (64, 128), (128, 256))
) + 256 * 10 + 10


# Multiply-adds at 28 px, by hand: each conv is H x W x Cout x (k x k x Cin), each dense In x Out.
CONVNET_MACS = 28 * 28 * 32 * 75 + 14 * 14 * 64 * 800 + 3136 * 1024 + 1024 * 10
_CONV3 = lambda size, cin, cout: size * size * cout * 9 * cin  # noqa: E731
RESNET_MACS = 28 * 28 * 64 * 27 + 4 * _CONV3(28, 64, 64) + sum(
    _CONV3(size, cin, cout) + 3 * _CONV3(size, cout, cout) + size * size * cout * cin
    for size, cin, cout in ((14, 64, 128), (7, 128, 256))) + 256 * 10


@pytest.mark.parametrize('variant,params,macs', [('convnet', CONVNET_PARAMS, CONVNET_MACS),
                                                 ('resnet18', RESNET_PARAMS, RESNET_MACS)])
def test_baselines_are_the_cited_networks(variant, params, macs):
  import jax
  import jax.numpy as jnp
  from senet_jax.models.counting import count
  from senet_jax.models import create_model
  assert (CONVNET_PARAMS, RESNET_PARAMS) == (3_276_234, 2_777_674)
  config = _fashion_config(variant)
  model = create_model(config.model, num_classes=10, **config.model_kwargs)
  assert count(model, 28) == (params, macs)
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 28, 28, 3)), train=False)[0])
  assert out.shape == (2, 10)
  if variant == 'resnet18':  # no downsampling in the stem: the stages see 28, 14 and 7 px
    features = create_model(config.model, num_classes=10, features_only=True,
                            **config.model_kwargs)
    maps = jax.eval_shape(lambda: features.init_with_output(
        jax.random.key(0), jnp.zeros((1, 28, 28, 3)))[0])
    assert [m.shape[1] for m in maps][-3:] == [28, 14, 7]


def test_baselines_see_the_original_28x28_pixels():
  from senet_jax.data import image_ops
  config = _fashion_config('convnet')
  assert _fashion_config('baseline').model_kwargs.stem == 'cifar'
  original = np.random.default_rng(0).integers(0, 256, (28, 28, 3)).astype(np.float32)
  padded = np.zeros((32, 32, 3), np.float32)
  padded[2:30, 2:30] = original  # as senet_jax/data/fashion_mnist.py stores it
  evaluated = image_ops.eval_image(padded, config.image_size, config.interpolation,
                                   config.eval_crop_fraction)
  np.testing.assert_array_equal(evaluated, original)
  rng = np.random.default_rng(1)
  windows = [image_ops.random_crop_window(rng, 32, 32, config.crop_area_range)
             for _ in range(200)]
  assert {(h, w) for _, _, h, w in windows} == {(28, 28), (32, 32)}  # 32: the center crop
  shifted = [(t, left) for t, left, h, _ in windows if h == 28]
  assert 0.3 < len(shifted) / len(windows) < 0.7 and len(set(shifted)) > 8
  assert all(0 <= t <= 4 and 0 <= left <= 4 for t, left in shifted)
