"""One run per workdir: an exclusive lock file held by process 0 for the run's whole life.

`workdir/.lock` is created with O_EXCL (atomic on local and NFS-v3+ file systems) and holds
the owner's pid, host, start time and command; a background thread touches it every
`heartbeat_s`. A lock is stale, and is taken over with a warning, when its process is gone
(same host) or its heartbeat is older than `stale_after_s` (another host). With several
processes only process 0 takes the lock and broadcasts the outcome, so every process stops
when it failed.

A lock file whose content is not such a record (not JSON, a list, a pid that is not a positive
integer, ...) was not left by a live run: a starting run creates the file and writes its record
microseconds later, so the only live malformed lock is one being written. Such a file is read
again until it is complete or `malformed_grace_s` old (by its mtime, and after at least one
pause, so a skewed clock cannot skip the wait), then taken over with a warning naming it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import threading
import time

import numpy as np

from senet_jax.errors import WorkdirLockedError  # noqa: F401 (raised here; exit 5)

LOCK_NAME = '.lock'
MAX_LOCK_BYTES = 1 << 16  # a record is < 4 KiB (the command is cut at 500 characters)




def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is no pid


def _problem(info) -> str | None:
  """What makes a parsed lock file not a record written by WorkdirLock, or None."""
  if not isinstance(info, dict):
    return f'a JSON {type(info).__name__}, not an object'
  pid, host, started = info.get('pid'), info.get('host'), info.get('started')
  # pid <= 0 would make os.kill() probe a process group (0, -1: every process).
  if not (_is_number(pid) and isinstance(pid, int) and 0 < pid < 2 ** 31):  # a C int
    return f'pid {pid!r:.40} is not a process id'
  if not isinstance(host, str) or not host:
    return f'host {host!r:.40} is not a host name'
  if not (_is_number(started) and math.isfinite(started)):
    return f'started {started!r:.40} is not a time'
  return None


def _describe(info: dict) -> str:
  try:
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))
  except (OverflowError, ValueError, OSError):  # a valid number, but no calendar date
    started = '?'
  return (f'pid {info["pid"]} on host {info["host"]}, started {started}: '
          f'{str(info.get("command", "?"))[:500]}')


class WorkdirLock:
  """`acquire()` / `release()` (or a context manager) around a run in `workdir`."""

  def __init__(self, workdir: str, heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
               malformed_grace_s: float = 5.0, reread_pause_s: float = 0.5):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.malformed_grace_s, self.reread_pause_s = malformed_grace_s, reread_pause_s
    self._stop = threading.Event()
    self._thread = None
    self.owner: dict = {}
    self.info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
                 'command': ' '.join(sys.argv)[:500]}

  def _read(self) -> tuple[object, str | None, os.stat_result]:
    """(parsed content, what is wrong with it or None, stat) of the lock file.

    Raises FileNotFoundError when it is gone, another OSError when it cannot be read.
    """
    with open(self.path, 'rb') as f:
      seen = os.fstat(f.fileno())
      raw = f.read(MAX_LOCK_BYTES)
    try:
      info = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
      return None, ('empty' if not raw else 'not JSON'), seen
    return info, _problem(info), seen

  def _stale_reason(self) -> tuple[str | None, os.stat_result | None]:
    """(why the existing lock is stale, its stat), or (None, stat) when its owner looks alive."""
    paused = False
    while True:
      try:
        info, problem, seen = self._read()
      except FileNotFoundError:
        return 'gone', None
      except OSError as err:
        raise WorkdirLockedError(
            f'cannot read the lock {self.path} ({err.strerror or err}); if no run uses '
            f'{os.path.dirname(self.path)}, delete it') from None
      age = time.time() - seen.st_mtime
      if problem is None:
        break
      if paused and age >= self.malformed_grace_s:
        return f'it is not a lock record ({problem}), {age:.0f} s old', seen
      time.sleep(self.reread_pause_s)  # a starting run may still be writing it
      paused = True
    if info['host'] == self.info['host'] and not _alive(info['pid']):
      return f'its process {info["pid"]} is no longer running', seen
    if age > self.stale_after_s:
      return f'no heartbeat for {age:.0f} s', seen
    self.owner = info
    return None, seen

  def _remove_if_unchanged(self, seen: os.stat_result) -> None:
    """Removes the stale lock unless it changed since it was judged (another starter's)."""
    try:
      now = os.stat(self.path)
      if (now.st_ino, now.st_mtime_ns, now.st_size) == (
          seen.st_ino, seen.st_mtime_ns, seen.st_size):
        os.remove(self.path)
    except FileNotFoundError:
      pass

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLockedError naming the run that holds it."""
    for _ in range(3):  # a stale lock removed by us, then raced by another starter
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        reason, seen = self._stale_reason()
        if reason is None:
          raise WorkdirLockedError(
              f'{os.path.dirname(self.path)} is in use by another run ({_describe(self.owner)}). '
              f'Wait for it to finish or use another --workdir; if that run is dead on another '
              f'host, delete {self.path}') from None
        if seen is not None:
          logging.warning('taking over the lock %s: %s', self.path, reason)
          self._remove_if_unchanged(seen)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(self.info, f)
      self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
      self._thread.start()
      return
    raise WorkdirLockedError(f'could not take the lock {self.path}: other runs keep taking it')

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.path)
      except OSError:  # removed under us: nothing to refresh
        pass

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is None:
      return
    self._thread = None
    try:
      info, problem, _ = self._read()
      if problem is None and all(info[k] == self.info[k] for k in ('pid', 'host', 'started')):
        os.remove(self.path)
    except OSError:  # gone or unreadable: not ours to remove
      pass

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def acquire_for_run(workdir: str, process_index: int, process_count: int) -> WorkdirLock | None:
  """Process 0 takes the lock; every process learns whether it did and stops if not."""
  lock, error = None, ''
  if process_index == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except (WorkdirLockedError, OSError) as err:
      error = str(err)
      if isinstance(err, OSError) and not isinstance(err, WorkdirLockedError):
        error = f'cannot create the lock {lock.path}: {err.strerror or err}'
  if process_count > 1:
    from jax.experimental import multihost_utils
    ok = multihost_utils.broadcast_one_to_all(np.asarray(0 if error else 1, np.int32))
    if not int(ok) and process_index != 0:
      raise WorkdirLockedError(f'process 0 could not lock {workdir} (see its log); stopping')
  if error:
    raise WorkdirLockedError(error)
  return lock
