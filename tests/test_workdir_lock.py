"""The workdir lock against malformed lock files (issue 31): a record no live run can have left
is taken over with a warning naming the file, never while a starting run may still be writing
it, and never with a traceback. The lock's basic behaviour is in test_config_validation.py."""
import json
import logging
import os
import socket
import threading
import time

import pytest

from senet_jax.training import workdir_lock

HOST = socket.gethostname()


def _lock_file(workdir: str, content: str, age_s: float = 0.0) -> str:
  """`workdir/.lock` holding `content`, its mtime `age_s` in the past."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with open(path, 'w') as f:
    f.write(content)
  if age_s:
    os.utime(path, (time.time() - age_s,) * 2)
  return path


# Contents a live run cannot have written. A minute old: a well-formed lock of another host
# would still count as live (heartbeat < 5 min), so only the content decides.
MALFORMED = {
    'list': '[1, 2, 3]',
    'string_pid': '{"pid": "abc"}',
    'empty_object': '{}',
    'negative_pid': '{"pid": -1}',
    'pid_beyond_c_int': json.dumps({'pid': 10 ** 20, 'host': HOST, 'started': 0}),
    'bool_pid': json.dumps({'pid': True, 'host': HOST, 'started': 0}),
    'started_not_a_time': json.dumps({'pid': os.getpid(), 'host': HOST, 'started': 'yesterday'}),
    'half_written': '{"pid": 12',
}


@pytest.mark.parametrize('content', MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_lock_is_taken_over_with_a_warning_naming_it(tmp_path, content, caplog):
  path = _lock_file(str(tmp_path), content, age_s=60)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
      with open(path) as f:
        assert json.load(f) == lock.info  # ours now
  assert not os.path.exists(path)  # and released
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and path in warnings[0] and 'not a lock record' in warnings[0]


@pytest.mark.parametrize('partial', ['', '{"pid": '])
def test_a_lock_being_written_is_waited_for_not_taken_over(tmp_path, partial):
  path = _lock_file(str(tmp_path), partial)  # just created (O_EXCL) by a starting run
  record = {'pid': os.getpid(), 'host': HOST, 'started': time.time(),
            'command': 'main.py --the-first-run'}

  def finish_writing():
    time.sleep(0.2)
    with open(path, 'w') as f:
      json.dump(record, f)

  writer = threading.Thread(target=finish_writing)
  writer.start()
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'in use by another run \(pid {os.getpid()} on host .*--the-first'):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    writer.join()
  with open(path) as f:
    assert json.load(f) == record  # the starting run's lock is intact


def test_a_fresh_malformed_lock_is_taken_over_only_after_the_grace_period(tmp_path):
  path = _lock_file(str(tmp_path), '{}')
  start = time.monotonic()
  with workdir_lock.WorkdirLock(str(tmp_path), malformed_grace_s=1.0,
                                reread_pause_s=0.1) as lock:
    waited = time.monotonic() - start
    with open(path) as f:
      assert json.load(f) == lock.info
  assert waited >= 0.9  # mtime resolution: the file may look up to ~0.1 s older


def test_release_removes_only_its_own_record(tmp_path):
  for i, content in enumerate(['[1, 2, 3]', 'same pid, another host']):
    os.makedirs(tmp_path / str(i))
    lock = workdir_lock.WorkdirLock(str(tmp_path / str(i)))
    lock.acquire()
    if i == 1:  # a record of another machine's run that has our pid
      content = json.dumps({**lock.info, 'host': HOST + '-other'})
    _lock_file(str(tmp_path / str(i)), content)  # replaced under the running lock
    lock.release()
    with open(lock.path) as f:
      assert f.read() == content
