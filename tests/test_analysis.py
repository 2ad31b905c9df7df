"""Research tools: CAM / Grad-CAM, excitation statistics, sweeps."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_RESNET, init_variables
from senet_jax.analysis import cam
from senet_jax.models import create_model


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
  from senet_jax import excitation as excitation_cli
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
  from senet_jax.analysis import excitation
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
  from senet_jax import cam as cam_cli
  from senet_jax import predict
  workdir, data_dir = trained
  paths = digit_pngs(data_dir, tmp_path)
  preds = predict.predict(workdir, paths)
  assert len(preds) == 2 and len(preds[0]) == 5
  assert preds[0][0][0].startswith('class ') and 0 < sum(p for _, p in preds[0]) <= 1.0001
  written = cam_cli.run(workdir, paths, str(tmp_path / 'cams'), 'gradcam')
  from PIL import Image
  assert Image.open(written[0]).size == (32, 32)


def test_summary_table_and_class_names():
  from senet_jax import summary
  from senet_jax.analysis import loading
  table = summary.summary_table('se_resnet18', 64)
  assert 'layer1_0' in table and 'Total Parameters' in table
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
  from senet_jax import sweep
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
  from senet_jax import sweep
  files = [f for f in glob.glob('configs/sweeps/*.py') if not f.endswith(('common.py',
                                                                         '__init__.py'))]
  assert len(files) == 7  # six SE-paper ablations + attention.py
  for f in files:
    config, points, _, _ = sweep.load_sweep(f + ':quick')
    assert config.dataset == 'senet_digits' and len(points) >= 2
    for point in points:
      built = sweep.apply_point(config, point)
      create_model(built.model, num_classes=10, **built.model_kwargs)
