"""Issue 22: no good checkpoint lost to a wrong flag, a restart, a second run or a failed save."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import config_diff, workdir_lock
from test_fault_tolerance import ROOT, _largest_file, main_cmd
from test_train import tiny_config

SHARDING = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _state(**sizes):
  return {'params': {k: np.full((n,), float(n), np.float32) for k, n in sizes.items()}}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SHARDING), state)


def _save_steps(directory, steps, state, metrics=None, keep=5):
  checkpointer = ckpt_lib.Checkpointer(directory, keep=keep)
  for step in steps:
    checkpointer.save(step, state, {'model': 'se_resnet18', 'step': step},
                      metrics=(metrics or {}).get(step))
  checkpointer.close()


def _corrupt(directory, step):
  victim = _largest_file(os.path.join(directory, str(step), 'state'))  # the array data
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)


# ---- 1. A structure mismatch is a config error; damage never renames the only checkpoints ---

def test_model_with_a_subset_of_the_parameters_is_a_mismatch_not_damage(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [5, 6], _state(a=3000, b=2))
  checkpointer = ckpt_lib.Checkpointer(d)
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"holds model 'se_resnet18'.*configured 'resnet18'.*params/b"):
    checkpointer.restore_latest_usable(_abstract(_state(a=3000)), 'resnet18')
  assert sorted(os.listdir(d)) == ['5', '6']  # nothing renamed


def test_when_every_checkpoint_is_damaged_nothing_is_renamed(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [5, 6], _state(a=3000))
  _corrupt(d, 5)
  _corrupt(d, 6)
  with pytest.raises(ckpt_lib.CheckpointError, match='no usable checkpoint.*Nothing was renamed'):
    ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state(a=3000)))
  assert sorted(os.listdir(d)) == ['5', '6']


def test_only_set_aside_checkpoints_left_is_an_error_not_a_fresh_start(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [5], _state(a=3000))
  os.rename(os.path.join(d, '5'), os.path.join(d, '5.broken'))
  with pytest.raises(ckpt_lib.CheckpointError, match=r'only set-aside.*5\.broken.*refusing'):
    ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state(a=3000)))


def test_reading_a_damaged_checkpoint_for_analysis_is_one_error_naming_it(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [5], _state(a=3000))
  _corrupt(d, 5)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'checkpoint .*/ckpt/5 is unreadable'):
    ckpt_lib.load_params(d)


# ---- 4. Set-aside names never collide; an unwritable directory is a message -----------------

def test_setting_aside_twice_at_the_same_step_does_not_collide(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [3, 6], _state(a=3000))
  os.makedirs(os.path.join(d, '6.broken', 'state'))  # from an earlier fallback
  _corrupt(d, 6)
  _, meta, step = ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state(a=3000)))
  assert (step, meta['step']) == (3, 3)
  assert sorted(os.listdir(d)) == ['3', '6.broken', '6.broken-2']


def test_permission_error_while_setting_aside_is_a_clear_error(tmp_path, monkeypatch):
  d = str(tmp_path / 'ckpt')
  _save_steps(d, [3, 6], _state(a=3000))
  _corrupt(d, 6)

  def refuse(src, dst):
    raise PermissionError(1, 'Operation not permitted', src)

  monkeypatch.setattr(os, 'rename', refuse)
  with pytest.raises(ckpt_lib.CheckpointError, match=r'cannot set aside .*/6 \(PermissionError'):
    ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state(a=3000)))


# ---- 2. The best checkpoint survives a restart ---------------------------------------------

def test_best_checkpoint_survives_a_restart_between_best_and_end(tmp_path):
  d = str(tmp_path / 'ckpt')
  top1 = {10: 0.5, 20: 0.9, 30: 0.6}  # best at 20
  _save_steps(d, [10, 20, 30], _state(a=3000), {s: {'top1': v} for s, v in top1.items()}, keep=1)
  assert ckpt_lib.complete_steps(d) == [20, 30]
  # A new process (preempted and restarted) goes on past the best one.
  _save_steps(d, [40, 50], _state(a=3000), {50: {'top1': 0.7}}, keep=1)
  assert ckpt_lib.complete_steps(d) == [20, 50]


# ---- 8. A failed save stops the run naming its step and the intact checkpoints -------------

def _fail_writing_step(monkeypatch, bad_step):
  handler = ocp.JsonCheckpointHandler
  original = handler._save_fn

  async def save_fn(self, x, directory):
    if isinstance(x, dict) and x.get('step') == bad_step:
      raise OSError(28, 'No space left on device')
    return await original(self, x, directory)

  monkeypatch.setattr(handler, '_save_fn', save_fn)


def test_background_save_failure_names_its_step_and_what_is_intact(tmp_path, monkeypatch):
  d = str(tmp_path / 'ckpt')
  _fail_writing_step(monkeypatch, 6)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r'writing checkpoint 6 .*No space left.*intact: \[3\]'):
    _save_steps(d, [3, 6, 9], _state(a=3000))


def test_training_stops_before_the_next_checkpoint_after_a_failed_save(digits_dir, tmp_path,
                                                                       monkeypatch):
  _fail_writing_step(monkeypatch, 3)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ckpt_lib.CheckpointError, match=r'writing checkpoint 3 .*intact: none'):
    train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=12), workdir)
  assert ckpt_lib.complete_steps(os.path.join(workdir, 'checkpoints')) == []
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # released


def test_eval_results_keep_one_entry_per_step_after_a_resume(tmp_path):
  for step, top1 in ((5, 0.1), (10, 0.2), (15, 0.3), (10, 0.25), (15, 0.35)):  # resumed at 5
    train._write_eval_json(str(tmp_path), step, {'top1': top1})
  with open(tmp_path / 'eval_results.json') as f:
    history = json.load(f)['history']
  assert [(h['step'], h['top1']) for h in history] == [(5, 0.1), (10, 0.25), (15, 0.35)]


# ---- Through the trainer and the real CLI ---------------------------------------------------

@pytest.fixture(scope='module')
def trained(digits_dir, tmp_path_factory):
  """A finished tiny run (checkpoints 3 and 6), copied by each test that changes it."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  train.train_and_evaluate(tiny_config(digits_dir), workdir)
  return workdir


def _copy(trained, tmp_path):
  return shutil.copytree(trained, str(tmp_path / 'run'))


def test_wrong_model_on_the_command_line_exits_2_and_touches_nothing(trained, digits_dir,
                                                                     tmp_path):
  workdir = _copy(trained, tmp_path)
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  run = subprocess.run(main_cmd(workdir, digits_dir, '--config.model=resnet18',
                                '--config.num_train_steps=8'),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 2, run.stderr[-2000:]
  error = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1 and "'se_resnet18'" in error[0] and "'resnet18'" in error[0]
  assert 'Traceback' not in run.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before == ['3', '6']


def test_changed_batch_size_on_resume_is_refused(trained, digits_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  with pytest.raises(config_diff.ConfigChangedError, match=r'batch_size: 32 -> 64'):
    train.train_and_evaluate(tiny_config(digits_dir, batch_size=64), workdir)
  assert ckpt_lib.complete_steps(os.path.join(workdir, 'checkpoints')) == [3, 6]


def test_second_run_on_a_locked_workdir_exits_5_naming_the_first(trained, digits_dir,
                                                                 tmp_path):
  workdir = _copy(trained, tmp_path)
  with workdir_lock.WorkdirLock(workdir):  # a live run (this process) holds it
    run = subprocess.run(main_cmd(workdir, digits_dir, '--config.learning_rate=0.05'),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 5, run.stderr[-2000:]
  assert f'in use by another run (pid {os.getpid()}' in run.stderr
  assert 'Traceback' not in run.stderr


def test_sigterm_during_imports_exits_42(tmp_path, digits_dir):
  proc = subprocess.Popen(main_cmd(str(tmp_path / 'run'), digits_dir), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(1.5)  # python is up; jax/tensorflow are still importing
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 42, err[-2000:]
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('flag,message', [
    ('--config.batch_sise=32', 'error: --config.batch_sise is not a field of '
     'tests/helpers/tiny_config.py; did you mean --config.batch_size?'),
    ('--config.model_kwargs.se_stages=(1,)', 'error: --config.model_kwargs.se_stages is not a '
     'field of tests/helpers/tiny_config.py; tests/helpers/tiny_config.py does not expose it'),
    ('--config=configs/no_such.py', "error: --config=configs/no_such.py: cannot load it ([Errno "
     "2] No such file or directory"),
    ('--config.model=seresnet18', "error: bad config: config.model='seresnet18' is not a "
     "registered model; did you mean 'se_resnet18'"),
])
def test_cli_config_mistakes_exit_2_in_one_line(tmp_path, digits_dir, flag, message):
  run = subprocess.run(main_cmd(str(tmp_path / 'run'), digits_dir, flag), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(message), errors
  assert 'Traceback' not in run.stderr
