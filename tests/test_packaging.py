"""The package installs from pyproject.toml and its tools run with no checkout around them."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """`pip install --no-deps --target` of the checkout (dependencies: the running venv's)."""
  target = tmp_path_factory.mktemp('site')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                  '--no-build-isolation', '--target', str(target), ROOT],
                 check=True, cwd=str(tmp_path_factory.mktemp('build')))
  return target


def run_outside(installed, tmp_path, args):
  """Runs `args` in an empty directory with only the installed copy importable."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(installed), JAX_PLATFORMS='cpu')
  return subprocess.run(args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=600)


def test_console_script_runs_from_a_directory_without_the_checkout(installed, tmp_path):
  script = os.path.join(installed, 'bin', 'senet-complexity')
  result = run_outside(installed, tmp_path, [sys.executable, script,
                                             '--models=mobilenet_v1,se_mobilenet_v1',
                                             '--resolution=32'])
  assert result.returncode == 0, result.stderr
  rows = {line.split('|')[1].strip(): float(line.split('|')[3])
          for line in result.stdout.splitlines() if 'mobilenet_v1 |' in line}
  # SE paper, Table 3: MobileNet 4.2M parameters, SE-MobileNet 4.7M.
  assert (round(rows['mobilenet_v1'], 1), round(rows['se_mobilenet_v1'], 1)) == (4.2, 4.7)


@pytest.mark.slow
def test_every_module_imports_without_top_level_repository_modules(installed, tmp_path):
  code = '''
import importlib, pkgutil, sys
import senet_jax
assert senet_jax.__file__.startswith(sys.argv[1]), senet_jax.__file__
for info in pkgutil.walk_packages(senet_jax.__path__, 'senet_jax.'):
  importlib.import_module(info.name)
leaked = sorted(m for m in ('train', 'main', 'configs') if m in sys.modules)
assert not leaked, leaked
print('ok')
'''
  result = run_outside(installed, tmp_path, [sys.executable, '-c', code, str(installed)])
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr


TRAIN_SCRIPT = '''
import jax, jax.numpy as jnp, optax
from senet_jax.models import create_model
model = create_model('se_resnet18', num_classes=10, attn_layer='eca', stage_sizes=(1, 1, 1, 1),
                     stage_planes=(8, 16, 16, 16), stem_width=8)
images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
labels = jnp.arange(8) % 10
variables = model.init(jax.random.key(1), images)
params, stats = variables['params'], variables['batch_stats']
tx = optax.sgd(0.1, momentum=0.9)
opt = tx.init(params)

@jax.jit
def step(params, stats, opt):
  def loss_fn(p):
    logits, new = model.apply({'params': p, 'batch_stats': stats}, images, train=True,
                              mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new
  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), new['batch_stats'], opt, loss

losses = []
for _ in range(5):
  params, stats, opt, loss = step(params, stats, opt)
  losses.append(float(loss))
print(losses)
assert losses[-1] < losses[0], losses
'''


@pytest.mark.slow
def test_a_one_file_script_outside_the_checkout_trains(installed, tmp_path):
  (tmp_path / 'train_me.py').write_text(TRAIN_SCRIPT)
  result = run_outside(installed, tmp_path, [sys.executable, 'train_me.py'])
  assert result.returncode == 0, result.stderr[-2000:]
