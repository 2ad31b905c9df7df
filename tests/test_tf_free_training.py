"""A training process on config.input_backend='grain' (the default) never imports TensorFlow,
and runs where it is not installed (issue 33).

The pieces that used to load it on that path, each replaced: clu's metric_writers (its package
imports the TF SummaryWriter) -> writers.TensorBoardWriter; main.py's up-front import to hide
accelerators -> utils/tf_host's import hook.
"""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TensorFlow made uninstalled (every finder answers "no such module" for it, as in an
# environment from requirements.txt alone), then the real command line (senet_jax.main.run:
# flags, validation, a first build of the digits dataset, trainer, TensorBoard writer,
# checkpoints, evaluation), then sys.modules once training has returned. app.run ends a
# successful run with SystemExit(0).
_DRIVER = '''
import importlib.util, sys

class NoTensorFlow:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return self.finder.find_spec(name, path, target)
  def __getattr__(self, name):
    return getattr(self.finder, name)

sys.meta_path[:] = [NoTensorFlow(f) for f in sys.meta_path]
assert importlib.util.find_spec('tensorflow') is None

import ml_collections
from senet_jax import errors
from senet_jax.data import pipeline
try:
  pipeline.make_train_iterator(ml_collections.ConfigDict({'input_backend': 'tfdata'}), None)
except errors.MissingDependencyError as err:
  print('TFDATA_ERROR', err.exit_code, err)

from senet_jax import main
# config_flags defines the --config.X overrides from sys.argv: set it, as `python main.py` does.
sys.argv = ['main.py', '--config=tests/helpers/tiny_config.py', '--workdir=' + sys.argv[1],
            '--config.data_dir=' + sys.argv[2]]
try:
  main.run()
except SystemExit as stop:
  assert stop.code in (0, None), stop.code
loaded = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))
print('TF_MODULES', loaded)
'''


def test_training_runs_without_tensorflow_installed(tmp_path):
  """Issue 33: requirements.txt has no TensorFlow. With it uninstallable, the default (grain)
  run builds the offline digits dataset, trains, checkpoints, evaluates and writes TensorBoard
  events; the tf.data backend is refused in one line naming the extra that installs it."""
  workdir, data_dir = str(tmp_path / 'run'), str(tmp_path / 'tfds')
  done = subprocess.run([sys.executable, '-c', _DRIVER, workdir, data_dir], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert ("TFDATA_ERROR 2 config.input_backend='tfdata' needs TensorFlow, which is not "
          "installed (make tf, or pip install -r requirements-tf.txt)") in done.stdout
  assert 'final eval: ' in done.stdout  # it trained (6 steps) and evaluated
  assert glob.glob(os.path.join(data_dir, 'senet_digits', '*', '*', '*.array_record*'))
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert 'TF_MODULES []' in done.stdout, done.stdout[-2000:]


def test_tensorboard_writer_writes_what_tf_summary_writes(tmp_path):
  """The reference: TensorFlow's own tf.summary.scalar in a TF2 file writer, read back by
  TensorBoard's EventAccumulator (tags, steps, float32 values, plugin)."""
  tf = pytest.importorskip('tensorflow')
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  from senet_jax.training import writers
  logged = [(3, {'train/loss': 1.5, 'eval/top1': 0.25}), (7, {'train/loss': 0.1})]
  ours = writers.create(str(tmp_path / 'ours'))
  for step, scalars in logged:
    ours.write_scalars(step, scalars)
  ours.close()
  with tf.summary.create_file_writer(str(tmp_path / 'tf')).as_default():
    for step, scalars in logged:
      for tag, value in scalars.items():
        tf.summary.scalar(tag, value, step=step)

  def read(logdir):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={'tensors': 0})
    acc.Reload()
    return {tag: ([(e.step, tensor_util.make_ndarray(e.tensor_proto).item(),
                    e.tensor_proto.dtype) for e in acc.Tensors(tag)],
                  acc.SummaryMetadata(tag).plugin_data.plugin_name)
            for tag in acc.Tags()['tensors']}
  want = read(str(tmp_path / 'tf'))
  assert read(str(tmp_path / 'ours')) == want
  assert want['train/loss'][1] == 'scalars' and len(want['train/loss'][0]) == 2


def test_accelerators_are_hidden_when_tensorflow_is_imported_later():
  code = (
      'import importlib.util, sys\n'
      'from senet_jax.utils import tf_host\n'
      'hidden = []\n'
      'tf_host.hide_accelerators = lambda tf: hidden.append(tf.__name__)\n'
      'tf_host.hide_accelerators_on_import()\n'
      # A probe (etils asks whether TensorFlow is installed) neither imports nor disarms it.
      'assert importlib.util.find_spec("tensorflow") is not None\n'
      'assert "tensorflow" not in sys.modules and hidden == []\n'
      'import tensorflow\n'
      'assert hidden == ["tensorflow"], hidden\n'
      'assert not any(isinstance(f, tf_host._HideOnImport) for f in sys.meta_path)\n')
  pytest.importorskip('tensorflow')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
