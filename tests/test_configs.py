"""Every config file loads and builds its model (shapes only, no compile)."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from senet_jax.models import create_model, min_resolution, model_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    f for f in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
    if os.path.basename(f) not in ('__init__.py', 'recipes.py'))


def load_config(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_builds_its_model(path):
  config = load_config(path)
  model = create_model(config.model, num_classes=config.num_classes, **config.model_kwargs)
  size = max(64, min_resolution(model))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, size, size, 3)))[0])
  assert out.shape == (1, config.num_classes)


@pytest.mark.parametrize('variant', ['b0', 'b3', 'b7'])
def test_efficientnet_configs_carry_resolution_dropout_and_recipe(variant):
  config = load_config(os.path.join(ROOT, 'configs', f'efficientnet_{variant}.py'))
  info = model_info(f'efficientnet_{variant}')
  assert config.image_size == {'b0': 224, 'b3': 300, 'b7': 600}[variant]
  assert config.model_kwargs.dropout_rate == {'b0': 0.2, 'b3': 0.3, 'b7': 0.5}[variant]
  assert info.resolution == config.image_size
  # Official recipe (reference section 4).
  assert (config.optimizer, config.learning_rate, config.lr_decay_factor) == (
      'rmsprop_tf', 0.016, 0.97)
  assert (config.ema_decay, config.weight_decay, config.label_smoothing) == (0.9999, 1e-5, 0.1)


@pytest.mark.parametrize('name,peak_lr,schedule', [
    ('se_vgg16', 0.6, 'step'), ('bn_inception', 0.6, 'step'),    # SE paper: 0.6 at 1024, /10
    ('se_shufflenet_v1_g3', 0.5, 'linear'),                       # ShuffleNet: 0.5, linear
    ('se_mobilenet_v1', 0.5, 'linear')])
def test_other_se_network_recipes(name, peak_lr, schedule):
  config = load_config(os.path.join(ROOT, 'configs', f'{name}.py'))
  assert config.model == name and config.batch_size == 1024
  assert config.learning_rate * config.batch_size / 256 == pytest.approx(peak_lr)
  assert config.lr_schedule == schedule and config.optimizer == 'sgd'
  assert config.model_kwargs.se == name.startswith('se_')


@pytest.mark.parametrize('name,batch', [('efficientnet_b7_lars', 65536),
                                        ('se_resnet50_lars', 32768)])
def test_large_batch_lars_recipes(name, batch):
  config = load_config(os.path.join(ROOT, 'configs', f'{name}.py'))
  # LARS as in tf.contrib LARSOptimizer / MLPerf: eta 0.001, epsilon 0, momentum 0.9,
  # BN and biases excluded, polynomial decay of power 2.
  assert (config.optimizer, config.lars_trust_coefficient, config.lars_epsilon) == (
      'lars', 1e-3, 0.0)
  assert config.momentum == 0.9 and config.batch_size == batch
  assert (config.lr_schedule, config.lr_poly_power) == ('poly', 2.0)
  assert 'bias' in config.weight_decay_exclude and 'scale' in config.weight_decay_exclude
