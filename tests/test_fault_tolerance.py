"""Preemption, damaged checkpoints, bad configs, write failures, several processes."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from senet_jax.training import checkpoint as ckpt_lib
from test_train import tiny_config
from suite_cost import host_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'tests/helpers/tiny_config.py'


@pytest.fixture
def data_dir(digits_dir):
  return digits_dir


def main_cmd(workdir, data_dir, *extra):
  return [sys.executable, 'main.py', f'--config={TINY}', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', *extra]


def test_sigterm_checkpoints_exits_42_and_resumes(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  cmd = main_cmd(workdir, data_dir, '--config.num_train_steps=400',
                 '--config.checkpoint_every_steps=1000')
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  seen = []
  for line in proc.stdout:  # wait until training is under way, then preempt
    seen.append(line)
    if 'step 3/400' in line:
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=300)
  log = ''.join(seen) + rest
  assert proc.returncode == 42, log[-3000:]
  steps = [int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 400  # the agreed stopping step, committed
  resumed = subprocess.run(main_cmd(workdir, data_dir, '--config.num_train_steps=400',
                                    '--config.checkpoint_every_steps=1000'),
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resumed from step {steps[0]}' in resumed.stderr
  assert 'final eval' in resumed.stdout


def _largest_file(directory):
  files = [f for f in glob.glob(os.path.join(directory, '**', '*'), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def test_damaged_newest_checkpoint_falls_back_without_deleting(data_dir, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  victim = _largest_file(os.path.join(ckpts, '6'))
  with open(victim, 'r+b') as f:  # a write killed half way through one file
    f.truncate(os.path.getsize(victim) // 2)
  os.makedirs(os.path.join(ckpts, 'notes'))                       # an unrelated directory
  os.makedirs(os.path.join(ckpts, '9.orbax-checkpoint-tmp-1234'))  # an interrupted save
  config.num_train_steps = 6
  train.train_and_evaluate(config, workdir)
  assert 'skipped broken checkpoints [6]' in caplog.text
  assert os.path.isdir(os.path.join(ckpts, '6.broken'))   # set aside, not deleted
  assert os.path.isdir(os.path.join(ckpts, '3'))          # the good one is still there
  assert ckpt_lib.load_params(workdir)['params']          # and step 6 was re-done


def test_no_usable_checkpoint_is_a_clear_error(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(data_dir, num_train_steps=3)
  train.train_and_evaluate(config, workdir)
  victim = _largest_file(os.path.join(workdir, 'checkpoints', '3'))
  with open(victim, 'r+b') as f:
    f.truncate(8)
  with pytest.raises(ckpt_lib.CheckpointError, match='no usable checkpoint'):
    train.train_and_evaluate(config, workdir)


def test_checkpoint_of_another_model_names_parameter_and_shapes(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), workdir)
  other = tiny_config(data_dir, num_train_steps=3)
  other.model_kwargs.stage_planes = (8, 16, 16, 48)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'layer4_0.*checkpoint has shape \(.*\), '
                                                     r'the model expects'):
    train.train_and_evaluate(other, workdir)


@pytest.mark.parametrize('field,value,message', [
    ('model', 'se_resnet51', 'config.model=.se_resnet51'),
    ('batch_size', 30, 'config.batch_size=30'),
    ('learning_rate', -0.1, 'config.learning_rate'),
    ('learning_rate', 0.0, 'config.learning_rate'),
    ('image_size', 16, 'config.image_size=16'),
    ('dataset', 'no_such_dataset', 'config.dataset=.no_such_dataset'),
    ('eval_split', 'validation', "split 'validation'"),
    ('optimizer', 'adagrad', 'config.optimizer'),
])
def test_bad_config_fails_before_compute_naming_the_field(data_dir, tmp_path, field, value,
                                                          message, monkeypatch):
  if field == 'batch_size':
    monkeypatch.setattr(jax, 'device_count', lambda: 8)
  config = tiny_config(data_dir, **{field: value})
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_disk_full_during_checkpoint_keeps_the_previous_one(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 6:
      raise OSError(28, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'No space left on device.*intact: \[3\]'):
    train.train_and_evaluate(tiny_config(data_dir), workdir)
  monkeypatch.undo()
  assert ckpt_lib.load_params(workdir)['params']  # step 3 still restores


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdirs, data_dir, num_processes, devices_per_process, extra=()):
  port = _free_port()
  env = host_devices_env(devices_per_process, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  procs = []
  for pid in range(num_processes):
    args = main_cmd(workdirs[pid], data_dir, *extra)
    if num_processes > 1:
      args += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
               f'--process_id={pid}']
    procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  return [p.returncode for p in procs], outs


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_four_devices(data_dir, tmp_path):
  multi = str(tmp_path / 'multi')
  codes, outs = _launch([multi, multi], data_dir, 2, 2)
  assert codes == [0, 0], [o[1][-2000:] for o in outs]
  single = str(tmp_path / 'single')
  codes1, outs1 = _launch([single], data_dir, 1, 4)
  assert codes1 == [0], outs1[0][1][-2000:]
  a, b = ckpt_lib.load_params(multi), ckpt_lib.load_params(single)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  with open(os.path.join(multi, 'eval_results.json')) as f:
    multi_eval = json.load(f)['latest']
  assert multi_eval['num_examples'] == 359  # every eval example exactly once over 2 hosts


@pytest.mark.multiprocess
def test_unshared_workdir_is_detected_within_seconds(data_dir, tmp_path):
  start = time.time()
  codes, outs = _launch([str(tmp_path / 'a'), str(tmp_path / 'b')], data_dir, 2, 1)
  assert all(c != 0 for c in codes)
  assert any('is not shared' in o[1] for o in outs), [o[1][-1500:] for o in outs]
  assert time.time() - start < 120


def _sigterm_self():
  os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_eval_checkpoints_after_it(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, num_train_steps=8, eval_every_epochs=3.5 / 44)  # eval at 3, 6
  original = train.evaluate

  def evaluate_then_term(*args, **kwargs):
    result = original(*args, **kwargs)
    _sigterm_self()  # arrives while eval is running
    return result

  monkeypatch.setattr(train, 'evaluate', evaluate_then_term)
  with pytest.raises(train.preemption.Preempted) as stop:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert stop.value.step == 3
  assert '3' in os.listdir(tmp_path / 'run' / 'checkpoints')


def test_sigterm_during_async_save_waits_for_it(data_dir, tmp_path, monkeypatch):
  original = ckpt_lib.Checkpointer.save

  def save_then_term(self, step, *args, **kwargs):
    started = original(self, step, *args, **kwargs)
    if step == 3:
      _sigterm_self()  # while step 3 is being written in the background
    return started

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save', save_then_term)
  with pytest.raises(train.preemption.Preempted) as stop:
    train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / 'run'))
  assert stop.value.step == 3
  assert ckpt_lib.load_params(str(tmp_path / 'run'))['params']  # committed and readable


def test_sigterm_before_the_first_step_exits_without_training(data_dir, tmp_path, monkeypatch):
  original = train.create_sharded_state

  def create_then_term(*args, **kwargs):
    _sigterm_self()
    return original(*args, **kwargs)

  monkeypatch.setattr(train, 'create_sharded_state', create_then_term)
  with pytest.raises(train.preemption.Preempted) as stop:
    train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / 'run'))
  assert stop.value.step == 0
  assert not [d for d in os.listdir(tmp_path / 'run' / 'checkpoints') if d.isdigit()]


def test_sigterm_after_the_last_step_lets_the_run_finish(data_dir, tmp_path, monkeypatch):
  original = train.evaluate

  def evaluate_then_term(*args, **kwargs):
    result = original(*args, **kwargs)
    _sigterm_self()  # the final eval, after the last step
    return result

  monkeypatch.setattr(train, 'evaluate', evaluate_then_term)
  results = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / 'run'))
  assert results['num_examples'] == 359


@pytest.mark.multiprocess
def test_non_finite_loss_stops_every_process_at_the_same_step(data_dir, tmp_path):
  codes, outs = _launch([str(tmp_path / 'nan')] * 2, data_dir, 2, 1,
                        ('--config.learning_rate=1e30', '--config.warmup_epochs=0',
                         '--config.num_train_steps=8'))
  assert codes[0] == codes[1] != 0
  steps = [re.search(r'non-finite loss at step (\d+)', err).group(1) for _, err in outs]
  assert steps[0] == steps[1]
