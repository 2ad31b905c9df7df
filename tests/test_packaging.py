"""The package installs from pyproject.toml and its tools run with no checkout around them.

`pip install .` and `pip install -e .` go into fresh virtualenvs that see the running
environment's packages through a .pth file (nothing is downloaded, and the running
environment is never written to); everything then runs from an empty directory.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ('convert', 'export', 'predict', 'summary', 'sweep', 'validate', 'complexity',
         'excitation', 'cam', 'evaluate')
# Where each console script's program lives (`python -m` of the same module).
TOOL_MODULES = {tool: f'senet_jax.tools.{tool}' for tool in TOOLS}
TOOL_MODULES.update(convert='senet_jax.convert', export='senet_jax.export',
                    validate='senet_jax.tools.evaluate')
REPOSITORY_MODULES = ('train', 'main', 'configs')  # the checkout's top level, not the package


def copy_of_checkout(destination) -> str:
  """What `pip install` reads (a fresh clone's files), away from the working checkout."""
  for name in ('pyproject.toml', 'README.md', 'requirements.txt'):
    shutil.copy(os.path.join(ROOT, name), destination)
  shutil.copytree(os.path.join(ROOT, 'senet_jax'), os.path.join(destination, 'senet_jax'),
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '*.so'))
  return str(destination)


def fresh_venv(root) -> str:
  """A new virtualenv whose interpreter also sees this environment's site-packages; its python."""
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(root)], check=True)
  python = os.path.join(root, 'bin', 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, 'running_environment.pth'), 'w') as f:
    # addsitedir (not a bare path): the running environment's own .pth files apply too.
    f.write(f'import site; site.addsitedir({sysconfig.get_paths()["purelib"]!r})\n')
  return python


def run_outside(venv_python, cwd, args, timeout=600):
  """Runs `args` in `cwd` with the virtualenv first on PATH and no PYTHONPATH."""
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  env.update(PATH=os.path.dirname(venv_python) + os.pathsep + env.get('PATH', ''),
             JAX_PLATFORMS='cpu')
  return subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module')
def installed(request, tmp_path_factory):
  """(venv python, source copy, mode) after `pip install [-e] --no-deps --no-build-isolation`.

  Parametrised by the tests (indirect): 'regular' (`pip install .`) or 'editable' (`-e`).
  """
  source = copy_of_checkout(tmp_path_factory.mktemp('clone'))
  python = fresh_venv(tmp_path_factory.mktemp('venv'))
  editable = ['-e'] if request.param == 'editable' else []
  subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                  *editable, source], check=True, cwd=str(tmp_path_factory.mktemp('build')))
  return python, source, request.param


def script(python: str, name: str) -> str:
  return os.path.join(os.path.dirname(python), name)


BOTH = pytest.mark.parametrize('installed', ['regular', 'editable'], indirect=True)


@pytest.mark.parametrize('installed', ['regular'], indirect=True)
def test_console_script_runs_from_a_directory_without_the_checkout(installed, tmp_path):
  python, _, _ = installed
  result = run_outside(python, tmp_path, [script(python, 'senet-complexity'),
                                          '--models=mobilenet_v1,se_mobilenet_v1',
                                          '--resolution=32'])
  assert result.returncode == 0, result.stderr
  rows = {line.split('|')[1].strip(): float(line.split('|')[3])
          for line in result.stdout.splitlines() if 'mobilenet_v1 |' in line}
  # SE paper, Table 3: MobileNet 4.2M parameters, SE-MobileNet 4.7M.
  assert (round(rows['mobilenet_v1'], 1), round(rows['se_mobilenet_v1'], 1)) == (4.2, 4.7)


# What a tool prints that a user should not have to read: TensorFlow's oneDNN banner, TFDS's
# download message for a dataset built offline, library tracebacks.
NOISE = ('oneDNN', 'Downloading and preparing', 'Traceback')

SWEEP = '''
from senet_jax.configs.sweeps import common


def get_config(variant=''):
  config = common.base_config('quick')
  config.model = 'se_resnet18'  # basic blocks compile faster
  config.model_kwargs.update(dict(stage_planes=(8, 8, 8, 8), stem_width=8))
  return config


def get_sweep(variant=''):
  return [{'model_kwargs.se_reduction': 4.0}, {'model_kwargs.se_reduction': 8.0}]
'''


def run_tool(python, cwd, *args):
  """A console script run outside the checkout; its output, checked for success and noise."""
  result = run_outside(python, cwd, [script(python, args[0]), *args[1:]])
  output = result.stdout + result.stderr
  assert result.returncode == 0, (args, output[-3000:])
  assert not [n for n in NOISE if n in output], (args, output[-3000:])
  return result.stdout


@pytest.mark.parametrize('installed', ['regular'], indirect=True)
def test_every_console_script_does_its_job_outside_the_checkout(installed, tmp_path):
  """`pip install .`, then from an empty directory: train a few steps with a shipped config,
  sweep two points of a sweep file importing the shipped configs, convert timm weights, and run
  every tool on the results (issue 36: senet-sweep died on `import configs`)."""
  python, _, _ = installed
  tfds = str(tmp_path / 'tfds')
  short = ['--config.num_epochs=0', '--config.num_train_steps=2', f'--config.data_dir={tfds}',
           '--config.batch_size=32', '--config.eval_batch_size=120']
  out = run_tool(python, tmp_path, 'senet-train', '--config=configs/quickstart.py',
                 '--workdir=run', '--config.model_kwargs.stage_planes=(8, 8, 8, 8)', *short)
  assert 'final eval: top1' in out and '359 images' in out
  (tmp_path / 'two_points.py').write_text(SWEEP)
  out = run_tool(python, tmp_path, 'senet-sweep', '--config=two_points.py', '--workdir=sweep',
                 *short)
  assert '[sweep 2/2] se_reduction=8.0: top-1' in out and 'Fewer than two' not in out
  out = run_tool(python, tmp_path, 'senet-sweep', '--config=configs/sweeps/se_gate.py:quick',
                 '--workdir=gate', '--print_commands', '--config.num_epochs=2')
  assert out.count('-m senet_jax.main') == 3 and out.count('--config.num_epochs=2') == 3
  out = run_outside(python, tmp_path, [python, '-m', 'senet_jax.data.digits', 'digit.png',
                                       '--resolution=32'])
  assert out.returncode == 0 and (tmp_path / 'digit.png').exists(), out.stderr[-2000:]
  out = run_tool(python, tmp_path, 'senet-predict', '--checkpoint=run', 'digit.png')
  assert out.count('%') >= 5  # top-5 classes with their probabilities
  out = run_tool(python, tmp_path, 'senet-cam', '--checkpoint=run', '--resolution=64',
                 '--output=cams', 'digit.png')
  assert (tmp_path / 'cams' / 'digit.gradcam.png').exists()
  run_tool(python, tmp_path, 'senet-excitation', '--checkpoint=run', '--classes=0,1',
           '--images_per_class=2', f'--data_dir={tfds}', '--output=excitation')
  assert (tmp_path / 'excitation.json').exists()
  out = run_tool(python, tmp_path, 'senet-validate', '--checkpoint=run', f'--data_dir={tfds}',
                 '--output=results.csv')
  assert 'wrote 1 rows to results.csv' in out
  out = run_tool(python, tmp_path, 'senet-summary', 'se_resnet18', '--resolution=32')
  header = next(line for line in out.splitlines() if 'path' in line and 'outputs' in line)
  assert header.index('params') < header.index('batch_stats')
  convert_and_export(python, tmp_path)


def convert_and_export(python, tmp_path):
  """A converter-style checkpoint from timm weights, exported as StableHLO and verified."""
  import numpy as np
  import timm
  from safetensors.numpy import save_file
  model = timm.create_model('legacy_seresnet18', pretrained=False, num_classes=10)
  save_file({k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()},
            str(tmp_path / 'w.safetensors'))
  run_tool(python, tmp_path, 'senet-convert', '--from=timm', '--model=legacy_seresnet18',
           '--input=w.safetensors', '--output=converted')
  out = run_tool(python, tmp_path, 'senet-export', '--checkpoint=converted', '--format=stablehlo',
                 '--output=model.stablehlo')
  assert 'wrote model.stablehlo (stablehlo' in out and 'top-1 agreement 100%' in out


@pytest.mark.slow
@BOTH
def test_every_console_script_answers_help(installed, tmp_path):
  python, _, _ = installed
  for tool in TOOLS:
    result = run_outside(python, tmp_path, [script(python, f'senet-{tool}'), '--help'])
    assert result.returncode == 0, (tool, result.stderr[-2000:])
    assert result.stdout.startswith('usage: senet-' + tool) and '--verbose' in result.stdout
    # The same program as `python -m senet_jax.tools.<tool>`: the module's docstring is the help.
    assert TOOL_MODULES[tool] in result.stdout, tool
  # senet-train (absl flags, as main.py): its help lists the flags, its docstring the usage.
  result = run_outside(python, tmp_path, [script(python, 'senet-train'), '--help'])
  assert result.returncode == 0 and 'senet-train --config=configs/quickstart.py' in (
      result.stdout), result.stderr[-2000:]


@pytest.mark.slow
@BOTH
def test_every_module_imports_without_top_level_repository_modules(installed, tmp_path):
  python, source, mode = installed
  code = '''
import importlib, os, pkgutil, sys
import senet_jax
where = os.path.dirname(senet_jax.__file__)
assert where.startswith(sys.argv[1]), where
for info in pkgutil.walk_packages(senet_jax.__path__, 'senet_jax.'):
  importlib.import_module(info.name)
leaked = sorted(m for m in ('train', 'main', 'configs') if m in sys.modules)
assert not leaked, leaked
print('ok')
'''
  # A regular install runs from the virtualenv's site-packages, an editable one from its source.
  expected = source if mode == 'editable' else os.path.dirname(os.path.dirname(python))
  result = run_outside(python, tmp_path, [python, '-c', code, expected])
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]


TRAIN_SCRIPT = '''
import jax, jax.numpy as jnp, numpy as np, optax
import senet_jax
from senet_jax.models import create_model
model = create_model('se_resnet18', num_classes=10, attn_layer='eca', stage_sizes=(1, 1, 1, 1),
                     stage_planes=(8, 16, 16, 16), stem_width=8)
images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
labels = jnp.arange(8) % 10
variables = model.init(jax.random.key(1), images)
params, stats = variables['params'], variables['batch_stats']
first = params
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
assert all(np.isfinite(losses)), losses
assert losses[-1] < losses[0], losses
moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params),
                                                         jax.tree.leaves(first))]
assert all(m > 0 for m in moved), moved  # every parameter was trained
print(senet_jax.__file__)
'''


@pytest.mark.slow
@BOTH
def test_a_one_file_script_outside_the_checkout_trains(installed, tmp_path):
  python, _, _ = installed
  (tmp_path / 'train_me.py').write_text(TRAIN_SCRIPT)
  result = run_outside(python, tmp_path, [python, 'train_me.py'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert not result.stdout.strip().splitlines()[-1].startswith(ROOT)  # not the checkout


# ---- The package never imports the repository around it --------------------------------------

def repository_imports(source: str) -> list[str]:
  """Names of REPOSITORY_MODULES that `source` imports (statements or literal import_module)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', ''))
          in ('import_module', '__import__') and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      names = [node.args[0].value]
    else:
      continue
    found += [n for n in names if n.split('.')[0] in REPOSITORY_MODULES]
  return found


def test_the_import_scan_finds_repository_imports():
  source = ('import os\nfrom configs.sweeps import common\ndef f():\n  import train\n'
            '  from main import x\nimportlib.import_module("configs.default")\n'
            'from senet_jax import training, trainer\nimport mainframe\n')
  assert sorted(repository_imports(source)) == ['configs.default', 'configs.sweeps', 'main',
                                               'train']


def test_the_package_never_imports_the_repository_modules():
  offenders = {}
  for directory, _, files in os.walk(os.path.join(ROOT, 'senet_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        with open(path) as f:
          found = repository_imports(f.read())
        if found:
          offenders[os.path.relpath(path, ROOT)] = found
  assert not offenders, offenders


# ---- The layout section (docs/layout.md, linked from the README) matches the tree ------------

def layout_block() -> str:
  with open(os.path.join(ROOT, 'docs', 'layout.md')) as f:
    text = f.read()
  return re.search(r'^## Layout\n\n```\n(.*?)^```', text, flags=re.S | re.M).group(1)


def test_every_path_the_readme_layout_names_exists():
  named = [line.split()[0] for line in layout_block().splitlines()
           if line and not line[0].isspace() and not line.startswith('#')]
  assert len(named) > 15
  missing = [path for path in named if not os.path.exists(os.path.join(ROOT, path))]
  assert not missing, missing


def test_the_readme_layout_names_every_part_of_the_package():
  block = layout_block()
  parts = [name + ('/' if os.path.isdir(os.path.join(ROOT, 'senet_jax', name)) else '')
           for name in os.listdir(os.path.join(ROOT, 'senet_jax'))
           if name not in ('__init__.py', '__pycache__')]
  unnamed = [p for p in parts if f'senet_jax/{p}' not in block]
  assert not unnamed, unnamed
  for tool in TOOLS:  # and every tool has its console script
    with open(os.path.join(ROOT, 'pyproject.toml')) as f:
      assert f'senet-{tool} = "{TOOL_MODULES[tool]}' in f.read(), tool
