"""Never save a bad state, never restore a corrupted one, never hang (issue 31, items 1-4).

- checksums: the digest against an independent numpy implementation of its definition, the
  same digest whatever the sharding, 20 random garbles of a saved checkpoint each detected;
- non-finite: no save path (ordinary, preemption, final) writes a NaN/inf state; a restored one
  is damage;
- foreign files in checkpoints/ are never deleted or renamed;
- a full disk ends the trainer with exit 4 in one line within 30 s; the same for export;
- Ctrl-C checkpoints at the step boundary and exits 130.
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train
from senet_jax import errors
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import integrity
from test_train import tiny_config
from suite_cost import host_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'tests/helpers/tiny_config.py'
SHARDING = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
M32 = 0xFFFFFFFF


# ---- The digest, by its definition (integrity.py's docstring) ---------------------------------

def _reference_digest(array) -> str:
  """mulxor-sum-v1 by its definition (integrity._leaf_report), in numpy, row-major order."""
  array = np.asarray(array)
  v = array.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[array.dtype.itemsize])
  v = v.reshape(-1).astype(np.uint64)
  s = (np.arange(v.size, dtype=np.uint64) * 0x9E3779B9) & M32
  lane_a = int(np.sum(((v ^ s) * 0x85EBCA6B) & M32) & M32)
  t = (v * 0xC2B2AE35 + s) & M32
  lane_b = int(np.sum(t ^ (t >> 16)) & M32)
  return f'{lane_a:08x}{lane_b:08x}'


def test_digest_matches_an_independent_numpy_reference():
  rng = np.random.default_rng(0)
  tree = {'w': rng.normal(size=(5, 7, 3)).astype(np.float32),
          'h': rng.normal(size=(33,)).astype(ml_dtypes.bfloat16),
          'step': np.int32(12345), 'flags': np.array([1, 0, 255], np.uint8)}
  digests, nonfinite = integrity.inspect(tree)
  assert nonfinite == []
  assert digests == {name: _reference_digest(value) for name, value in tree.items()}


def test_any_single_change_and_a_swap_change_the_digest_nan_is_reported():
  w = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
  base = integrity.inspect({'w': w})[0]['w']
  flipped = w.copy()
  flipped.reshape(-1).view(np.uint8)[4097] ^= 0x01  # one bit of one element
  swapped = w.copy()
  swapped[0, 0], swapped[0, 1] = w[0, 1], w[0, 0]  # same values, other places
  assert integrity.inspect({'w': flipped})[0]['w'] != base
  assert integrity.inspect({'w': swapped})[0]['w'] != base
  w[3, 4] = np.inf
  assert integrity.inspect({'a': {'w': w}, 'b': np.ones(3, np.float32)})[1] == ['a/w']


def test_digest_is_the_same_on_one_device_and_sharded_over_four():
  script = (
      "import jax, numpy as np\n"
      "from jax.sharding import NamedSharding, PartitionSpec as P\n"
      "from senet_jax.training import integrity\n"
      "w = np.random.default_rng(2).normal(size=(8, 6, 5)).astype(np.float32)\n"
      "mesh = jax.make_mesh((2, 2), ('a', 'b'))\n"
      "s = jax.device_put(w, NamedSharding(mesh, P('a', 'b')))\n"
      "print(integrity.inspect({'w': s})[0]['w'])\n")
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=host_devices_env(4, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  w = np.random.default_rng(2).normal(size=(8, 6, 5)).astype(np.float32)
  assert out.stdout.split()[-1] == _reference_digest(w)


# ---- Save and restore ------------------------------------------------------------------------

def _state(nan_in=None):
  rng = np.random.default_rng(3)
  state = {'params': {'conv': rng.normal(size=(3, 3, 16, 32)).astype(np.float32),
                      'bias': rng.normal(size=(32,)).astype(np.float32)},
           'opt_state': {'mu': rng.normal(size=(4000,)).astype(np.float32)},
           'step': np.int32(6)}
  if nan_in:
    state[nan_in[0]][nan_in[1]][7] = np.nan
  return state


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=SHARDING),
                      state)


def _save(directory, steps, state):
  checkpointer = ckpt_lib.Checkpointer(directory, keep=5, keep_best=False)
  for step in steps:
    checkpointer.save(step, state, {'model': 'se_resnet18', 'step': step})
  checkpointer.close()


def _garble(path, offset, rng, count=16):
  with open(path, 'r+b') as f:
    f.seek(offset)
    old = f.read(count)
    f.seek(offset)
    f.write(bytes((b ^ int(rng.integers(1, 256))) for b in old))


def test_twenty_random_garbles_of_a_checkpoint_are_each_detected(tmp_path):
  clean = str(tmp_path / 'clean')
  _save(clean, [6], _state())
  ckpt_lib.Checkpointer(clean).restore(6, _abstract(_state()))  # the control reads back
  # Any byte of any file orbax wrote for the step (arrays, indexes, markers, the record).
  files = sorted(f for f in glob.glob(os.path.join(clean, '6', '**', '*'), recursive=True)
                 if os.path.isfile(f) and not f.endswith(integrity.FILES_NAME))
  sizes = np.array([os.path.getsize(f) for f in files])
  rng = np.random.default_rng(31)
  detected = []
  for trial in range(20):
    copy = str(tmp_path / f'garbled{trial}')
    shutil.copytree(clean, copy)
    position = int(rng.integers(0, sizes.sum() - 16))
    index = int(np.searchsorted(np.cumsum(sizes), position, side='right'))
    offset = min(position - int(sizes[:index].sum()), int(sizes[index]) - 16)
    _garble(files[index].replace(clean, copy), max(offset, 0), rng)
    try:
      ckpt_lib.Checkpointer(copy).restore(6, _abstract(_state()))
      detected.append(False)
    except Exception:  # noqa: BLE001 - any failure to restore is detection
      detected.append(True)
  assert sum(detected) == 20, detected


def test_a_garbled_newest_checkpoint_is_set_aside_and_the_previous_restored(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save(d, [3, 6], _state())
  data = max((f for f in glob.glob(os.path.join(d, '6', 'state', '**', 'd', '*'),
                                   recursive=True)), key=os.path.getsize)
  _garble(data, os.path.getsize(data) // 2, np.random.default_rng(0))
  _, meta, step = ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state()))
  assert (step, meta['step']) == (3, 3)
  assert sorted(os.listdir(d)) == ['3', '6.broken']


def test_without_the_file_checksums_the_array_digests_still_catch_garbled_data(tmp_path):
  # A step killed between orbax's commit and checksums.json: the record's digests remain.
  d = str(tmp_path / 'ckpt')
  _save(d, [3, 6], _state())
  os.remove(os.path.join(d, '6', integrity.FILES_NAME))
  data = max((f for f in glob.glob(os.path.join(d, '6', 'state', '**', 'd', '*'),
                                   recursive=True)), key=os.path.getsize)
  _garble(data, os.path.getsize(data) // 2, np.random.default_rng(1))
  # The record's layer: the array digests, or the finiteness check when the garbled bits
  # happen to decode as NaN/inf.
  with pytest.raises(errors.CheckpointDamagedError, match='fails its checksum|holds NaN/inf'):
    ckpt_lib.Checkpointer(d).restore(6, _abstract(_state()))
  ckpt_lib.Checkpointer(d).restore(3, _abstract(_state()))  # the untouched step verifies


def test_a_nonfinite_state_is_never_saved(tmp_path):
  d = str(tmp_path / 'ckpt')
  _save(d, [3], _state())
  checkpointer = ckpt_lib.Checkpointer(d, keep_best=False)
  with pytest.raises(errors.NonFiniteError, match=r'step 6 holds NaN/inf \(opt_state/mu\).*'
                                                  r'Checkpoints kept: \[3\]'):
    checkpointer.save(6, _state(nan_in=('opt_state', 'mu')), {'step': 6})
  checkpointer.close()
  assert sorted(os.listdir(d)) == ['3']


def test_a_restored_nonfinite_state_is_damage(tmp_path):
  # A checkpoint written without the checks (an older senet_jax, or orbax directly).
  d = str(tmp_path / 'ckpt')
  _save(d, [3], _state())
  manager = ocp.CheckpointManager(d, item_handlers={'state': ocp.StandardCheckpointHandler(),
                                                    'meta': ocp.JsonCheckpointHandler()})
  manager.save(6, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_state(nan_in=('params', 'bias'))),
      meta=ocp.args.JsonSave({'step': 6})))
  manager.wait_until_finished()
  manager.close()
  _, _, step = ckpt_lib.Checkpointer(d).restore_latest_usable(_abstract(_state()))
  assert step == 3 and sorted(os.listdir(d)) == ['3', '6.broken']


def test_entries_the_trainer_did_not_write_are_refused_and_kept(tmp_path):
  d = tmp_path / 'ckpt'
  _save(str(d), [3], _state())
  (d / '300').write_text('my notes')  # a file named like a step
  (d / '7').mkdir()                   # an empty directory named like one
  with pytest.raises(errors.CheckpointError, match=r'holds 300, 7, which the trainer did not'):
    ckpt_lib.Checkpointer(str(d))
  assert (d / '300').read_text() == 'my notes' and (d / '7').is_dir()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'other'), keep_best=False)
  (tmp_path / 'other' / '9').write_text('dropped in during the run')
  with pytest.raises(errors.CheckpointError, match=r'other/9 already exists'):
    checkpointer.save(9, _state(), {'step': 9})
  assert (tmp_path / 'other' / '9').read_text() == 'dropped in during the run'


# ---- The trainer: the preemption save follows the same rule ---------------------------------

def _signal_during_step(monkeypatch, signum, step):
  """Sends `signum` to this process during `step` (Checkpointer.check runs once per step)."""
  original, calls = ckpt_lib.Checkpointer.check, []

  def check_then_signal(self):
    original(self)
    calls.append(1)
    if len(calls) == step:
      os.kill(os.getpid(), signum)
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'check', check_then_signal)


def test_preemption_after_a_nonfinite_loss_writes_nothing_and_raises(digits_dir, tmp_path,
                                                                     monkeypatch):
  _signal_during_step(monkeypatch, signal.SIGTERM, 5)  # between checkpoints
  config = tiny_config(digits_dir, learning_rate=1e30, warmup_epochs=0.0, num_train_steps=50,
                       checkpoint_every_steps=40, log_every_steps=40)
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not [d for d in os.listdir(tmp_path / 'run' / 'checkpoints') if d.isdigit()]


def test_ctrl_c_checkpoints_at_the_step_boundary_and_stops_with_130(digits_dir, tmp_path,
                                                                      monkeypatch):
  _signal_during_step(monkeypatch, signal.SIGINT, 3)
  previous = signal.getsignal(signal.SIGINT)
  config = tiny_config(digits_dir, num_train_steps=50, checkpoint_every_steps=40)
  with pytest.raises(train.preemption.Preempted) as stop:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert stop.value.exit_code == 130 and stop.value.step == 3
  assert 'interrupted (Ctrl-C); checkpoint written at step 3' in str(stop.value)
  assert sorted(d for d in os.listdir(tmp_path / 'run' / 'checkpoints') if d.isdigit()) == ['3']
  assert signal.getsignal(signal.SIGINT) is previous  # the handlers are given back


# ---- Through the command line ---------------------------------------------------------------

def _main(workdir, data_dir, *extra):
  return [sys.executable, 'main.py', f'--config={TINY}', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', *extra]


def _run_until(cmd, marker, sig, delay=0.0, timeout=300):
  """Starts `cmd`, sends `sig` `delay` s after a line containing `marker`; (rc, output)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if marker in line:
      time.sleep(delay)
      proc.send_signal(sig)
      break
  rest, _ = proc.communicate(timeout=timeout)
  return proc.returncode, ''.join(seen) + rest


def test_nan_then_sigterm_three_times_keeps_the_good_checkpoint_and_exits_3(digits_dir,
                                                                           tmp_path):
  workdir = tmp_path / 'run'
  first = subprocess.run(_main(workdir, digits_dir, '--config.num_train_steps=3'), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  diverging = ('--config.allow_config_change=True', '--config.learning_rate=1e30',
               '--config.warmup_epochs=0', '--config.num_train_steps=100000',
               '--config.checkpoint_every_steps=100000', '--config.log_every_steps=100000')
  for _ in range(3):
    code, log = _run_until(_main(workdir, digits_dir, *diverging),
                           'compiling the train step ... done', signal.SIGTERM, delay=2.0)
    assert code == 3, log[-3000:]
    assert 'Traceback' not in log and 'error: non-finite' in log
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['3']
  assert ckpt_lib.load_params(str(workdir))['params']  # still intact and verified


def test_ctrl_c_writes_a_checkpoint_and_exits_130(digits_dir, tmp_path):
  workdir = tmp_path / 'run'
  code, log = _run_until(_main(workdir, digits_dir, '--config.num_train_steps=100000',
                               '--config.checkpoint_every_steps=100000'),
                         'step 3/100000', signal.SIGINT)
  assert code == 130, log[-3000:]
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log
  steps = [int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit()]
  assert len(steps) == 1 and steps[0] >= 3
  assert f'interrupted (Ctrl-C); checkpoint written at step {steps[0]}' in log


def test_a_foreign_file_in_checkpoints_stops_the_run_and_is_kept(digits_dir, tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'checkpoints' / '6').write_text('not a checkpoint')
  out = subprocess.run(_main(workdir, digits_dir), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 4, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'holds 6, which the trainer did not write' in out.stderr
  assert 'compiling' not in out.stderr  # refused before any compute
  assert (workdir / 'checkpoints' / '6').read_text() == 'not a checkpoint'


@pytest.fixture
def full_disk(tmp_path):
  """A 20 MB tmpfs with 1 MB free (root only; skipped elsewhere)."""
  mount = tmp_path / 'small'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=20m', 'tmpfs', str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip('cannot mount a tmpfs here (needs root)')
  try:
    subprocess.run(['fallocate', '-l', '19M', str(mount / 'filler')], check=True)
    yield mount
  finally:
    subprocess.run(['umount', '-l', str(mount)], capture_output=True)


def test_disk_full_exits_4_in_one_line_within_30_s(digits_dir, full_disk):
  # The clock starts at the last train step, where the hang of the issue began (the failed save
  # and the exit); start-up and compilation, which vary 2x with the load of the machine, are not
  # part of it.
  proc = subprocess.Popen(_main(full_disk / 'run', digits_dir), cwd=ROOT, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  watchdog = threading.Timer(300, proc.kill)  # a hung process closes no pipe: kill it
  watchdog.start()
  lines, last_step_at = [], None
  try:
    for line in proc.stderr:
      lines.append(line)
      if last_step_at is None and re.search(r'step (\d+)/\1 ', line):
        last_step_at = time.time()
    code = proc.wait()
  finally:
    watchdog.cancel()
  assert last_step_at is not None, ''.join(lines)[-2000:]
  assert time.time() - last_step_at < 30, 'the process did not end within 30 s of the failed save'
  stderr = ''.join(lines)
  assert code == 4, stderr[-2000:]
  assert 'Traceback' not in stderr
  assert [l for l in stderr.splitlines() if l.startswith('error:')] == [
      stderr.strip().splitlines()[-1]]
  assert 'No space left on device' in stderr and 'Previous checkpoints' in stderr


@pytest.mark.parametrize('fmt', ['stablehlo', 'savedmodel'])  # Python's OSError; TF's own
def test_export_to_a_full_disk_exits_4_and_leaves_nothing(full_disk, tmp_path, fmt):
  from senet_jax.export.__main__ import main as export_main
  from test_export import TINY as TINY_KWARGS, write_checkpoint
  subprocess.run(['fallocate', '-l', '900K', str(full_disk / 'more')], check=True)  # < 100 KB
  checkpoint = write_checkpoint(tmp_path / 'ckpt', 'se_resnet18', TINY_KWARGS)
  output = full_disk / 'model'
  assert export_main([f'--checkpoint={checkpoint}', f'--format={fmt}',
                      f'--output={output}']) == 4
  assert sorted(os.listdir(full_disk)) == ['filler', 'more']
