"""Research tools: CAM / Grad-CAM, excitation statistics, sweeps."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_RESNET, init_variables
from senet_jax.models import create_model
from senet_jax.tools import cam


def patch_image(row, col, size=128, patch=32):
  image = np.zeros((size, size, 3), np.float32)
  image[row:row + patch, col:col + patch] = 3.0
  return image


def test_cam_peak_follows_the_class_relevant_patch():
  # Construct the class-relevant head: class 0's weights are the feature direction that a
  # bright patch produces (its feature vector minus the background's). CAM must then peak
  # where the patch is, and move with it.
  model = create_model('se_resnet18', num_classes=2, **TINY_RESNET)
  variables = init_variables(model)
  top_left = patch_image(0, 0)[None]  # 128 px -> a 4x4 feature map, one cell per 32 px
  _, feats = cam._apply_with_tap(model, variables, jnp.asarray(top_left))
  f = np.asarray(feats[0])
  direction = f[0, 0] - f[-1, -1]  # patch cell minus the far background cell
  params = jax.tree.map(lambda x: x, variables['params'])
  params['fc'] = {'kernel': jnp.stack([direction, -direction], axis=1),
                  'bias': jnp.zeros(2)}
  variables = {**variables, 'params': params}
  for row, col in [(0, 0), (96, 96), (0, 96), (64, 32)]:
    image = jnp.asarray(patch_image(row, col)[None])
    for fn in (cam.cam, cam.grad_cam):
      heat = np.asarray(fn(model, variables, image, [0])[0])
      assert heat.shape == (128, 128)
      peak = np.unravel_index(np.argmax(heat), heat.shape)
      assert abs(peak[0] - (row + 16)) <= 24 and abs(peak[1] - (col + 16)) <= 24, (fn, peak)


class _Identity(nn.Module):
  def __call__(self, x):
    return x


class _GapLinear(nn.Module):
  """Hand-built 'network': the input is the feature map, then GAP + a linear head."""

  @nn.compact
  def __call__(self, x, train=False):
    feats = _Identity(name='features')(x)
    return nn.Dense(2, name='fc')(feats.mean(axis=(1, 2)))


def test_cam_and_grad_cam_on_a_hand_built_feature_map():
  # Channel 0 lights the top-left cell, channel 1 the bottom-right; class 0 weighs them
  # +1 and -0.5, so CAM = A0 - 0.5 A1 = +2 top-left, -1 bottom-right, 0 elsewhere.
  # Min-max scaled: 1, 0 and 1/3. Grad-CAM's weights are d logit / d A_k averaged over the
  # 16 cells = w_k / 16, so Grad-CAM = relu(CAM) / 16, scaled: 1 top-left, 0 everywhere else.
  feats = np.zeros((1, 4, 4, 2), np.float32)
  feats[0, 0, 0, 0] = 2.0
  feats[0, 3, 3, 1] = 2.0
  model = _GapLinear()
  kernel = np.array([[1.0, 0.0], [-0.5, 0.0]], np.float32)
  variables = {'params': {'fc': {'kernel': kernel, 'bias': np.zeros(2, np.float32)}}}
  expected_cam = np.full((4, 4), 1 / 3, np.float32)
  expected_cam[0, 0], expected_cam[3, 3] = 1.0, 0.0
  expected_grad_cam = np.zeros((4, 4), np.float32)
  expected_grad_cam[0, 0] = 1.0
  got_cam = np.asarray(cam.cam(model, variables, jnp.asarray(feats), [0])[0])
  got_grad_cam = np.asarray(cam.grad_cam(model, variables, jnp.asarray(feats), [0])[0])
  np.testing.assert_allclose(got_cam, expected_cam, atol=1e-6)
  np.testing.assert_allclose(got_grad_cam, expected_grad_cam, atol=1e-6)


def test_feature_map_check_refuses_1x1_and_suggests_a_resolution():
  model = create_model('se_resnet18', num_classes=2, **TINY_RESNET)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))  # shapes are all it needs
  assert cam.feature_map_size(model, variables, 32) == (1, 1)  # stride 32
  assert cam.feature_map_size(model, variables, 128) == (4, 4)
  with pytest.raises(cam.FeatureMapTooSmall, match=r'1x1 at 32 px.*--resolution=128'):
    cam.check_feature_map((1, 1), 32)
  assert '2x2' in cam.check_feature_map((2, 2), 64)  # coarse: drawn, with a note
  assert cam.check_feature_map((4, 4), 128) is None


def test_overlay_is_uint8_rgb(tmp_path):
  image = np.zeros((16, 16, 3), np.uint8)
  heat = np.linspace(0, 1, 256).reshape(16, 16)
  out = cam.overlay(image, heat)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  path = cam.save_overlays([image], [heat], [str(tmp_path / 'a.png')])[0]
  assert os.path.getsize(path) > 0


# ---- Tools on a real (tiny, briefly trained) checkpoint -------------------------------------

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  import train
  from senet_jax.data import digits
  from test_train import tiny_config
  root = tmp_path_factory.mktemp('trained')
  data_dir = str(root / 'tfds')
  digits.build(data_dir, 32)
  workdir = str(root / 'run')
  train.train_and_evaluate(tiny_config(data_dir, num_train_steps=4), workdir)
  return workdir, data_dir


def digit_pngs(data_dir, tmp_path, n=2):
  from senet_jax.data import pipeline
  source = pipeline.open_source('senet_digits', 'test', data_dir)
  paths = []
  for i in range(n):
    path = tmp_path / f'digit{i}.png'
    path.write_bytes(source[i]['image'])
    paths.append(str(path))
  return paths


def test_excitation_cli_collects_blocks_and_plots(trained, tmp_path):
  from senet_jax.tools import excitation as excitation_cli
  workdir, _ = trained
  prefix = str(tmp_path / 'exc')
  assert excitation_cli.main([f'--checkpoint={workdir}', '--blocks=SE_2_1,SE_5_1',
                              '--classes=0,1', '--images_per_class=5',
                              f'--output={prefix}']) == 0
  assert os.path.getsize(prefix + '.png') > 1000
  data = np.load(prefix + '.npz')
  assert set(data.files) == {'SE_2_1/all', 'SE_2_1/class_0', 'SE_2_1/class_1', 'SE_5_1/all',
                             'SE_5_1/class_0', 'SE_5_1/class_1'}
  assert data['SE_2_1/class_0'].shape == (8,) and data['SE_5_1/all'].shape == (32,)
  assert np.all((data['SE_5_1/all'] > 0) & (data['SE_5_1/all'] < 1))  # sigmoid gates


def test_excitation_means_are_per_class_averages():
  from senet_jax.tools import excitation
  model = create_model('se_resnet18', num_classes=3, **TINY_RESNET)
  variables = init_variables(model)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  batch = {'image': x, 'label': np.array([0, 1, 0, 2]), 'mask': np.array([1, 1, 1, 0.0])}
  stats = excitation.collect(model, variables, [batch], blocks=['SE_3_1'])
  from senet_jax.models import collect_excitations
  _, state = model.apply(variables, x, mutable=['intermediates'])
  gates = np.asarray(collect_excitations(state['intermediates'])['SE_3_1'])[:, 0, 0]
  np.testing.assert_allclose(stats['SE_3_1']['class_0'], gates[[0, 2]].mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['SE_3_1']['all'], gates[:3].mean(0), rtol=1e-5)
  assert 'class_2' not in stats['SE_3_1']  # only padding had class 2


def test_predict_and_cam_cli_on_a_checkpoint(trained, tmp_path):
  from senet_jax.tools import cam as cam_cli
  from senet_jax.tools import predict
  workdir, data_dir = trained
  paths = digit_pngs(data_dir, tmp_path)
  preds = predict.predict(workdir, paths)
  assert len(preds) == 2 and len(preds[0]) == 5
  assert preds[0][0][0].startswith('class ') and 0 < sum(p for _, p in preds[0]) <= 1.0001
  with pytest.raises(cam.FeatureMapTooSmall):  # 32 px: a 1x1 last feature map
    cam_cli.run(workdir, paths, str(tmp_path / 'cams'), 'gradcam')
  assert cam_cli.main([f'--checkpoint={workdir}', f'--output={tmp_path}', paths[0]]) == 2
  from PIL import Image
  big = str(tmp_path / 'big.png')  # drawn at the input's resolution, not the model's
  Image.open(paths[0]).resize((100, 100)).save(big)
  written = cam_cli.run(workdir, paths[:1] + [big], str(tmp_path / 'cams'), 'gradcam',
                        resolution=64)
  assert Image.open(written[0]).size == (32, 32) and Image.open(written[1]).size == (100, 100)
  assert os.path.getsize(written[1].replace('.png', '.figure.png')) > 1000


def test_summary_table_and_class_names():
  from senet_jax.tools import summary
  from senet_jax import loading
  table = summary.summary_table('se_resnet18', 64)
  # 11,778,592: timm's legacy_seresnet18. BN channels 64 + 4x64 + (4+1)x128 + (4+1)x256 +
  # (4+1)x512 = 4,800, a mean and a variance each: 9,600 statistics.
  assert 'layer1_0' in table
  assert 'Parameters: 11,778,592 (trained); batch_stats: 9,600 (not trained)' in table
  assert 'Total Parameters' not in table and 'train: False' not in table
  names = loading.class_names(1000)
  assert len(names) == 1000 and names[0].startswith('tench')


SWEEP_FILE = '''
import ml_collections
from configs.sweeps import common


def get_config(variant=''):
  config = common.base_config('quick')
  config.model = 'se_resnet18'  # basic blocks compile faster; the sweep logic is the same
  config.model_kwargs.update(dict(stage_planes=(8, 8, 8, 8), stem_width=8))
  config.update(dict(num_epochs=0.0, num_train_steps=2, data_dir=%r, batch_size=32,
                     eval_batch_size=120, checkpoint_every_steps=100))
  return config


def get_sweep(variant=''):
  return [{'model_kwargs.se_reduction': 4.0}, {'model_kwargs.se_reduction': 8.0}]
'''


def test_sweep_runs_skips_finished_points_and_summarizes(trained, tmp_path, capsys):
  from senet_jax.tools import sweep
  _, data_dir = trained
  config_file = tmp_path / 'two_points.py'
  config_file.write_text(SWEEP_FILE % data_dir)
  config, points, path, variant = sweep.load_sweep(f'{config_file}:quick')
  assert [sweep.point_name(p) for p in points] == ['se_reduction=4.0', 'se_reduction=8.0']
  workdir = str(tmp_path / 'sweep')
  assert sweep.run(config, points, workdir) == ['se_reduction=4.0', 'se_reduction=8.0']
  assert sweep.run(config, points, workdir) == []  # finished points are skipped
  rows = sweep.summarize(points, workdir)
  assert [r['finished'] for r in rows] == [True, True]
  assert all(0.0 <= r['top1'] <= 1.0 and r['step'] == 2 for r in rows)
  assert 'se_reduction=8.0' in open(os.path.join(workdir, 'summary.md')).read()
  assert sweep.main([f'--config={config_file}:quick', f'--workdir={workdir}',
                     '--print_commands']) == 0
  out = capsys.readouterr().out
  assert '--config.model_kwargs.se_reduction=4.0' in out and out.count('main.py') == 2


def test_every_shipped_sweep_expands_on_its_quick_config():
  import glob
  from senet_jax.tools import sweep
  files = [f for f in glob.glob('configs/sweeps/*.py') if not f.endswith(('common.py',
                                                                         '__init__.py',
                                                                         'fashion_mnist.py'))]
  assert len(files) == 7  # six SE-paper ablations + attention.py
  for f in files:
    config, points, _, _ = sweep.load_sweep(f + ':quick')
    assert config.dataset == 'senet_digits' and len(points) >= 2
    for point in points:
      built = sweep.apply_point(config, point)
      create_model(built.model, num_classes=10, **built.model_kwargs)


def _fake_run(workdir, top1, seed, seconds=10.0, params=1000):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'eval_results.json'), 'w') as f:
    json.dump({'latest': {'step': 5, 'top1': top1, 'top5': 1.0}}, f)
  with open(os.path.join(workdir, 'sweep_point_done.json'), 'w') as f:
    json.dump({'seed': seed, 'seconds': seconds, 'params': params}, f)


def test_sweep_summary_spread_over_seeds_and_verdict(tmp_path):
  from senet_jax.tools import sweep
  points = [{'model_kwargs.se_reduction': 4.0}, {'model_kwargs.se_reduction': 8.0}]
  # r=4: 0.90, 0.92, 0.94 (mean 0.92, std 0.02); r=8: 0.91, 0.93, 0.95 (mean 0.93, std 0.02).
  for point, base in zip(points, (0.90, 0.91)):
    for seed in range(3):
      _fake_run(sweep.run_dir(str(tmp_path), sweep.point_name(point), seed),
                base + 0.02 * seed, seed)
  rows = sweep.summarize(points, str(tmp_path))
  assert rows[0]['top1'] == pytest.approx(0.92) and rows[0]['top1_std'] == pytest.approx(0.02)
  assert rows[1]['seeds'] == '0 1 2' and rows[1]['params'] == 1000 and rows[1]['runs'] == 3
  text = open(tmp_path / 'summary.md').read()
  assert 'within the seed spread' in text and '1.00 pp' in text and '2.00 pp' in text
  # Far apart: r=8 at 0.99 +- 0.01 beats r=4 (0.92 +- 0.02) by 7 pp > 2 x 2 pp.
  for seed, v in enumerate((0.98, 0.99, 1.0)):
    _fake_run(sweep.run_dir(str(tmp_path), 'se_reduction=8.0', seed), v, seed)
  sweep.summarize(points, str(tmp_path))
  assert 'Best: se_reduction=8.0 (99.00%)' in open(tmp_path / 'summary.md').read()


def test_sweep_with_one_seed_says_the_spread_is_unknown(tmp_path):
  from senet_jax.tools import sweep
  points = [{'model_kwargs.se_reduction': 4.0}, {'model_kwargs.se_reduction': 8.0}]
  for point, v in zip(points, (0.9889, 0.9861)):  # one test image of 359 apart
    _fake_run(sweep.run_dir(str(tmp_path), sweep.point_name(point), None), v, 0)
  sweep.summarize(points, str(tmp_path))
  assert 'rerun with --seeds=0,1,2' in open(tmp_path / 'summary.md').read()


def test_sweep_runs_every_seed_and_prints_runnable_commands(tmp_path, monkeypatch, capsys):
  import sys
  import train
  from senet_jax.tools import sweep
  trained_dirs = []

  def fake_train(config, workdir):  # the sweep's bookkeeping, without training
    trained_dirs.append((os.path.relpath(workdir, tmp_path / 'w'), config.seed))
    _fake_run(workdir, 0.5, config.seed)
    return {'top1': 0.5}
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  monkeypatch.setattr(sweep, 'count_params', lambda *fields: 7)
  config, points, _, _ = sweep.load_sweep('configs/sweeps/se_gate.py:quick')
  ran = sweep.run(config, points[:2], str(tmp_path / 'w'), seeds=[0, 1])
  assert ran == [d for d, _ in trained_dirs] == [
      'se_gate=sigmoid/seed=0', 'se_gate=sigmoid/seed=1', 'se_gate=tanh/seed=0',
      'se_gate=tanh/seed=1']
  assert [s for _, s in trained_dirs] == [0, 1, 0, 1]
  out = capsys.readouterr().out
  assert '[sweep 1/4]' in out and '[sweep 4/4]' in out and 'ETA' in out
  assert sweep.run(config, points[:2], str(tmp_path / 'w'), seeds=[0, 1]) == []
  capsys.readouterr()
  monkeypatch.chdir(tmp_path)  # relative config path from outside the clone
  assert sweep.main(['--config=configs/sweeps/se_gate.py:quick', '--workdir=rel',
                     '--print_commands', '--seeds=3']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(points)
  first = lines[0].split()
  assert first[0] == sys.executable and os.path.isfile(first[1]) and first[1].endswith('main.py')
  config_file = first[2].split('=', 1)[1].rsplit(':', 1)[0]
  assert os.path.isabs(config_file) and os.path.isfile(config_file)
  assert f'--workdir={tmp_path}/rel/' in lines[0] and lines[0].endswith('--config.seed=3')


def test_sweep_counts_parameters_from_shapes():
  from senet_jax.tools import sweep
  config, points, _, _ = sweep.load_sweep('configs/sweeps/se_reduction_ratio.py')
  config = sweep.apply_point(config, {'model_kwargs.se_reduction': 16.0})
  # SE-ResNet-50: 28,088,024 parameters (timm legacy_seresnet50)
  assert sweep.count_params(config.model, config.num_classes, config.model_kwargs,
                            config.image_size) == 28_088_024
