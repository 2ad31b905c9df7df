"""The trainer end to end on the offline digits dataset (tiny model, a handful of steps)."""
import glob
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import train
from configs import quickstart
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import preemption
from suite_cost import host_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def data_dir(digits_dir):
  return digits_dir


def tiny_config(data_dir, **kw):
  config = quickstart.get_config()
  config.model_kwargs.update(dict(stage_planes=(8, 16, 16, 32), stem_width=8))
  config.update(dict(data_dir=data_dir, batch_size=32, eval_batch_size=128, num_epochs=0.0,
                     num_train_steps=6, eval_every_epochs=0.0, checkpoint_every_steps=3,
                     log_every_steps=2, keep_checkpoints=5))
  config.update(kw)
  return config


def test_train_and_evaluate_end_to_end(data_dir, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, ema_decay=0.0, evals='flipped',
                       eval_definitions={'flipped': dict(dataset='senet_digits', split='test',
                                                         flip=True)})
  caplog.set_level(logging.INFO)
  results = train.train_and_evaluate(config, workdir)
  # One line per log step (every 2 steps, and at the step-3 checkpoint), none from clu's
  # logging writer; the compilations are announced.
  log = [r.getMessage() for r in caplog.records]
  assert [m.split(' |')[0] for m in log if m.startswith('step ')] == [
      'step 2/6', 'step 3/6', 'step 4/6', 'step 6/6']
  assert sum(m.startswith('eval at step 6: top1') for m in log) == 1
  assert not [m for m in log if 'train_loss' in m or 'train/loss' in m]
  assert any(m.startswith('compiling the train step ... done in') for m in log)
  assert results['num_examples'] == 359 and 'ema_top1' not in results
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  # A second evaluator (flip TTA) reports under its own name, next to the main one.
  assert results['flipped_num_examples'] == 359 and 0.0 <= results['flipped_ece'] <= 1.0
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    saved = json.load(f)
  assert saved['latest']['step'] == 6 and saved['latest']['top1'] == results['top1']
  assert saved['latest']['flipped_top1'] == results['flipped_top1']
  # --mode=eval: the same numbers from the checkpoint, recorded in eval_results.json too.
  assert train.evaluate_only(config, workdir) == pytest.approx(results)
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    history = json.load(f)['history']
  # One entry per step: the re-evaluation replaces the training eval of step 6 (same numbers).
  assert [h['step'] for h in history] == [6]
  assert {k: v for k, v in history[0].items() if k != 'step'} == pytest.approx(results)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  # The second evaluator's line reads like the main one's (issue 36: 'flipped_top1 0.9972').
  assert any('|| flipped: top1 ' in m and ' images' in m for m in log if m.startswith('eval at'))
  # A rerun of the finished run says so, trains nothing, and evaluates its checkpoint again.
  caplog.clear()
  assert train.train_and_evaluate(config, workdir) == pytest.approx(results)
  log = [r.getMessage() for r in caplog.records]
  assert f'run already complete: step 6 of 6 in {workdir}; nothing to train, evaluating its ' \
         'last checkpoint' in log
  assert not [m for m in log if m.startswith('step ')]


def _final_state(workdir):
  return ckpt_lib.load_params(workdir)


def test_interrupted_run_resumes_to_identical_state(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, augment='randaugment', ema_decay=0.9, checkpoint_every_steps=2)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)

  interrupted = str(tmp_path / 'interrupted')
  monkeypatch.setattr(preemption.PreemptionWatcher, 'should_stop', lambda self, step: step == 3)
  with pytest.raises(preemption.Preempted) as stop:
    train.train_and_evaluate(config, interrupted)
  assert stop.value.step == 3
  assert '3' in os.listdir(os.path.join(interrupted, 'checkpoints'))
  monkeypatch.undo()
  resumed_results = train.train_and_evaluate(config, interrupted)

  a, b = _final_state(straight), _final_state(interrupted)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise on CPU
  with open(os.path.join(straight, 'eval_results.json')) as f:
    assert json.load(f)['latest']['ema_top1'] == resumed_results['ema_top1']


def test_init_from_reinitialises_the_head(data_dir, tmp_path):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(tiny_config(data_dir, num_train_steps=2), source)
  target = str(tmp_path / 'target')
  config = tiny_config(data_dir, num_train_steps=1, init_from=source, learning_rate=1e-9,
                       warmup_epochs=0.0, weight_decay=0.0)
  train.train_and_evaluate(config, target)
  before, after = _final_state(source)['params'], _final_state(target)['params']
  np.testing.assert_allclose(after['conv1']['kernel'], before['conv1']['kernel'], atol=1e-6)
  assert not np.allclose(after['fc']['kernel'], before['fc']['kernel'])


def test_non_finite_loss_stops_with_the_step(data_dir, tmp_path):
  config = tiny_config(data_dir, learning_rate=1e30, warmup_epochs=0.0, log_every_steps=1,
                       num_train_steps=8, checkpoint_every_steps=100)
  with pytest.raises(train.NonFiniteLossError, match=r'non-finite loss at step \d'):
    train.train_and_evaluate(config, str(tmp_path / 'nan'))


def test_sharded_step_on_8_devices_equals_1_device():
  env = host_devices_env(8)
  out = subprocess.run([sys.executable, 'tests/helpers/sharded_vs_single.py'], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert abs(result['loss_8'] - result['loss_1']) < 1e-5
  # Same global batch -> same BN statistics and update, up to float summation order.
  assert result['params'] < 1e-5 * max(result['param_scale'], 1.0)
  assert result['batch_stats'] < 1e-5 and result['ema'] < 1e-5


def run_main(*args, timeout=600, env=None):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


def test_misspelt_override_is_an_error(tmp_path):
  out = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}',
                 '--config.batchsize=32')
  assert out.returncode != 0
  assert 'batchsize' in out.stderr


def test_bad_config_value_exits_2_with_field_name(tmp_path, data_dir):
  # PYTHONPROFILEIMPORTTIME lists every module imported (it survives main.py's re-exec).
  out = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}',
                 '--config.batch_size=0', f'--config.data_dir={data_dir}',
                 env={**os.environ, 'PYTHONPROFILEIMPORTTIME': '1'})
  assert out.returncode == 2
  assert 'config.batch_size=0' in out.stderr
  imported = [line.split('|')[-1].strip() for line in out.stderr.splitlines()
              if line.startswith('import time:')]
  assert 'senet_jax.training.validate' in imported
  # A mistyped value fails before TensorFlow's import (seconds) and before the workdir exists.
  assert 'tensorflow' not in imported
  assert not os.listdir(tmp_path)


def test_workdir_that_is_a_file_is_rejected(tmp_path, data_dir):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(train.ConfigError, match='not a directory'):
    train.train_and_evaluate(tiny_config(data_dir), str(path))
