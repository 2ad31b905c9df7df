"""What a new user met first (issue 36, item 6): library noise, output formats, fast errors."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from senet_jax.training import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_building_the_digits_prints_no_tfds_download_lines_or_bars(tmp_path, capfd, caplog):
  from senet_jax.data import digits
  caplog.set_level(logging.INFO)
  digits.build(str(tmp_path), 16)
  out, err = capfd.readouterr()
  for noise in ('Downloading and preparing', 'downloaded and prepared', 'Generating splits',
                'Shuffling', 'has no dataset_info.json'):
    assert noise not in out + err + caplog.text, noise
  assert 'building the senet_digits dataset from scikit-learn (no download)' in caplog.text


def test_a_missing_dataset_names_the_data_dir_given(tmp_path):
  from senet_jax.data import pipeline
  with pytest.raises(ValueError) as err:
    pipeline.open_source('mnist', 'train', str(tmp_path))
  message = str(err.value)
  assert f"config.data_dir='{tmp_path}':" in message  # the flag's value, not a subdirectory
  assert f'--data_dir={tmp_path} ' in message


def test_extra_evaluators_are_formatted_like_the_main_one():
  results = {'top1': 0.9889, 'top5': 1.0, 'loss': 0.0524, 'ece': 0.0152, 'num_examples': 359.0,
             'ema_top1': 0.9861, 'ema_num_examples': 359.0,
             'train_top1': 0.9972, 'train_loss': 0.01, 'train_num_examples': 1438.0,
             'ema_train_top1': 0.9965, 'ema_train_num_examples': 1438.0,
             'imagenet_a_top5': 0.5}
  assert progress.format_results(results) == (
      'top1 98.89% | top5 100.00% | loss 0.0524 | ece 0.0152 | 359 images || '
      'EMA: top1 98.61% | 359 images || imagenet_a: top5 50.00% || '
      'train: top1 99.72% | loss 0.0100 | 1438 images || train EMA: top1 99.65% | 1438 images')


@pytest.mark.parametrize('model', ['se_resnet18', 'mobilenetv3_small_100'])
def test_summary_lists_params_before_batch_stats_whatever_order_flax_gives(model, monkeypatch):
  from flax.linen import summary as flax_summary
  from senet_jax.tools import summary
  original = flax_summary._get_module_table

  def reversed_columns(*args, **kwargs):  # flax's order comes from a set: make it the other one
    def table_fn(*a, **k):
      table = original(*args, **kwargs)(*a, **k)
      table.collections = tuple(sorted(table.collections, reverse=True))
      return table
    return table_fn
  monkeypatch.setattr(flax_summary, '_get_module_table', reversed_columns)
  header = next(line for line in summary.summary_table(model, 32).splitlines()
                if 'path' in line and 'outputs' in line)
  assert header.index('params') < header.index('batch_stats'), header


@pytest.mark.parametrize('fmt,package', [('onnx', 'tf2onnx'), ('savedmodel', 'tensorflow'),
                                         ('tflite', 'tensorflow')])
def test_export_without_its_converter_fails_before_anything_is_converted(
    fmt, package, tmp_path, monkeypatch, capsys):
  """TensorFlow and tf2onnx are the optional extra (requirements-tf.txt): missing, the export
  names the package and the command that installs it, before reading the checkpoint."""
  from senet_jax.export import serving
  from senet_jax.export.__main__ import main
  monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed

  def loaded(*args, **kwargs):
    raise AssertionError(f'the checkpoint was read before the missing {package} was reported')
  monkeypatch.setattr(serving, 'load', loaded)  # (the TFLite conversion came after it)
  output = tmp_path / f'model.{fmt}'
  code = main([f'--checkpoint={tmp_path}', f'--format={fmt}', f'--output={output}'])
  err = capsys.readouterr().err
  assert code == 2
  assert err.strip().splitlines() == [
      f'error: --format={fmt} needs {package}, which is not installed (make tf, or pip '
      f'install -r requirements-tf.txt); nothing was converted']
  assert not os.path.exists(output)


def test_init_from_reads_a_checkpoint_without_orbax_warnings(tmp_path, caplog):
  from senet_jax.convert import core
  from senet_jax.training import checkpoint
  variables = {'params': {'fc': {'kernel': np.ones((4, 3), np.float32)}},
               'batch_stats': {'bn': {'mean': np.zeros(4, np.float32)}}}
  core.save_converted(str(tmp_path), variables, {'model': 'se_resnet18'})  # as the converter
  caplog.set_level(logging.WARNING)
  loaded = checkpoint.load_params(str(tmp_path))
  np.testing.assert_array_equal(loaded['params']['fc']['kernel'], np.ones((4, 3)))
  assert not [r.getMessage() for r in caplog.records], caplog.text


def test_the_digit_png_command_writes_a_test_digit(tmp_path):
  from PIL import Image
  from senet_jax.data import digits
  path = str(tmp_path / 'digit.png')
  assert digits.main([path, '--index=3', '--resolution=48']) == 0
  with Image.open(path) as image:
    assert image.size == (48, 48) and image.mode == 'RGB'
    pixels = np.asarray(image)
  # The same image as the dataset's: scikit-learn's 8x8 digit upscaled (independent of TFDS).
  images, labels = digits.load_images(48)
  _, test = digits.stratified_split(labels)
  np.testing.assert_array_equal(pixels, images[test[3]])
  assert pixels.std() > 10  # a digit, not a blank
  assert digits.main([path, '--index=100000']) == 2


def test_every_tool_silences_tensorflow_before_importing_it(monkeypatch):
  from senet_jax.utils import cli
  monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
  monkeypatch.delenv('TF_CPP_MIN_LOG_LEVEL', raising=False)
  cli.parser('a tool')
  assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '0' and os.environ['TF_CPP_MIN_LOG_LEVEL'] == '2'


@pytest.mark.parametrize('flag,message', [
    ('--config.optimizer=adamm', "config.optimizer='adamm'; allowed:"),
    ('--config.num_epochs=0', 'set config.num_epochs > 0 or config.num_train_steps > 0'),
])
def test_config_values_checked_without_data_fail_before_tensorflow(tmp_path, flag, message):
  # These were checked after TensorFlow's import (7-10 s); PYTHONPROFILEIMPORTTIME lists every
  # module imported (it survives main.py's re-exec).
  run = subprocess.run([sys.executable, 'main.py', '--config=configs/quickstart.py',
                        f'--workdir={tmp_path}', flag], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'PYTHONPROFILEIMPORTTIME': '1'})
  assert run.returncode == 2, run.stderr[-2000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], errors
  imported = [line.split('|')[-1].strip() for line in run.stderr.splitlines()
              if line.startswith('import time:')]
  assert 'senet_jax.training.validate' in imported and 'tensorflow' not in imported


def test_sweep_settings_are_overridden_on_its_command_line(capsys):
  from senet_jax.tools import sweep
  config, points, path, _ = sweep.load_sweep('configs/sweeps/se_gate.py:quick')
  overrides = sweep.config_overrides(['--config.num_epochs=2', '--config.data_dir', '/data',
                                      '--config.model_kwargs.stage_planes=(8, 8, 8, 8)'])
  changed = sweep.apply_overrides(config, overrides, points, path)
  assert (changed.num_epochs, changed.data_dir) == (2.0, '/data')
  assert tuple(changed.model_kwargs.stage_planes) == (8, 8, 8, 8) and config.num_epochs == 8.0
  assert sweep.main(['--config=configs/sweeps/se_gate.py:quick', '--workdir=w',
                     '--print_commands', '--config.num_epochs=2']) == 0
  commands = capsys.readouterr().out.strip().splitlines()
  assert len(commands) == 3 and all('--config.num_epochs=2' in c for c in commands)
  for flag, message in (('--config.num_epoch=2', "--config.num_epoch is not a field of "
                         "configs/sweeps/se_gate.py; did you mean 'num_epochs'"),
                        ('--config.num_epochs=two', "--config.num_epochs=two: expected a float"),
                        ('--config.model_kwargs.se_gate=relu', '--config.model_kwargs.se_gate: '
                         'the sweep configs/sweeps/se_gate.py varies this field'),
                        ('--epochs=2', "unrecognized argument '--epochs=2'")):
    try:  # argparse's errors exit; the others are returned
      code = sweep.main(['--config=configs/sweeps/se_gate.py:quick', '--workdir=w',
                         '--print_commands', flag])
    except SystemExit as exit_:
      code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith('error: ' + message), (flag, err)
