"""One run per workdir: an exclusive lock file held by process 0 for the run's whole life.

`workdir/.lock` is created with O_EXCL (atomic on local and NFS-v3+ file systems) and holds
the owner's pid, host, start time and command; a background thread touches it every
`heartbeat_s`. A lock is stale, and is taken over with a warning, when its process is gone
(same host) or its heartbeat is older than `stale_after_s` (another host). With several
processes only process 0 takes the lock and broadcasts the outcome, so every process stops
when it failed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time

import numpy as np

LOCK_NAME = '.lock'


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir (main.py exits with 5)."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _describe(info: dict) -> str:
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('started', 0)))
  return (f'pid {info.get("pid")} on host {info.get("host")}, started {started}: '
          f'{info.get("command", "?")}')


class WorkdirLock:
  """`acquire()` / `release()` (or a context manager) around a run in `workdir`."""

  def __init__(self, workdir: str, heartbeat_s: float = 30.0, stale_after_s: float = 300.0):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self._stop = threading.Event()
    self._thread = None
    self.owner: dict = {}
    self.info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
                 'command': ' '.join(sys.argv)[:500]}

  def _stale_reason(self) -> str | None:
    """Why the existing lock is stale, or None when its owner looks alive."""
    try:
      with open(self.path) as f:
        info = json.load(f)
      age = time.time() - os.path.getmtime(self.path)
    except FileNotFoundError:
      return 'gone'
    except (OSError, ValueError):
      return 'unreadable'  # a crash while writing it: O_EXCL makes that the only way
    if info.get('host') == self.info['host'] and not _alive(int(info.get('pid', -1))):
      return f'its process {info.get("pid")} is no longer running'
    if age > self.stale_after_s:
      return f'no heartbeat for {age:.0f} s'
    self.owner = info
    return None

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLockedError naming the run that holds it."""
    for _ in range(3):  # a stale lock removed by us, then raced by another starter
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        reason = self._stale_reason()
        if reason is None:
          raise WorkdirLockedError(
              f'{os.path.dirname(self.path)} is in use by another run ({_describe(self.owner)}). '
              f'Wait for it to finish or use another --workdir; if that run is dead on another '
              f'host, delete {self.path}') from None
        logging.warning('taking over the lock %s: %s', self.path, reason)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
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
      with open(self.path) as f:
        ours = json.load(f).get('pid') == self.info['pid']
      if ours:
        os.remove(self.path)
    except (OSError, ValueError):
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
