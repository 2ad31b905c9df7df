"""Every error senet_jax reports to a user, each with the exit status main.py gives it.

A leaf module: it imports nothing of ours, so any module (and the CLI's error path) can use it
without pulling in JAX, orbax or TensorFlow. Exit statuses are documented in main.py and the
README's fault-tolerance section.
"""
from __future__ import annotations

import re

# How an exhausted or unwritable file system shows in the messages of Python, TensorFlow,
# tensorstore (orbax) and tf2onnx -- several of them raise their own types, not OSError, and
# bury the OS's words at the end of a long message.
_WRITE_FAILURE = re.compile(r'No space left on device|Disk quota exceeded|Read-only file system|'
                            r'Permission denied|Input/output error|File too large')


class SenetError(Exception):
  """Base of the errors reported as one line; `exit_code` is the process exit status."""
  exit_code = 1


class ConfigError(SenetError, ValueError):
  """A config value is invalid; the message names the field and what was expected."""
  exit_code = 2


class MissingDependencyError(ConfigError, ImportError):
  """A feature the config or command asks for needs an optional package that is not installed
  (TensorFlow: the tf.data backend, SavedModel / TFLite / ONNX export); the message names the
  feature and the command that installs it. Nothing was computed."""
  exit_code = 2


class NonFiniteError(SenetError, RuntimeError):
  """The loss, a parameter or an optimizer leaf became NaN/inf; no checkpoint of it is written
  and the last good checkpoints are kept."""
  exit_code = 3


class CheckpointError(SenetError, RuntimeError):
  """A checkpoint cannot be used or written (unreadable, disk full, ...); the message says why."""
  exit_code = 4


class CheckpointMismatchError(CheckpointError, ConfigError):
  """The checkpoint is intact but holds another model/optimizer: a config mistake."""
  exit_code = 2


class CheckpointDamagedError(Exception):
  """A checkpoint read back but does not match what was saved (checksum, non-finite value).

  Deliberately not a CheckpointError: the restore path treats it as damage (set the checkpoint
  aside, fall back to an older one) rather than as a fatal error.
  """


class OutputWriteError(SenetError, OSError):
  """An output file (export, converter) could not be written: disk full, permission, I/O."""
  exit_code = 4


class WorkdirLockedError(SenetError, RuntimeError):
  """Another live run holds the workdir (training/workdir_lock.py); nothing was touched."""
  exit_code = 5


PREEMPTED_EXIT_CODE = 42    # SIGTERM / the scheduler's preemption notice: requeue me
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C: 128 + SIGINT, as shells report it


class Preempted(Exception):
  """Raised after the checkpoint at `step` is committed; `exit_code` is 42 for a preemption
  (SIGTERM) and 130 for Ctrl-C. Not a SenetError: it is a clean stop, logged as a warning."""

  def __init__(self, step: int, interrupted: bool = False, saved: bool = True):
    what = 'interrupted (Ctrl-C)' if interrupted else 'preempted'
    super().__init__(f'{what}; checkpoint written at step {step}' if saved else
                     f'{what} at step {step}; nothing new to save, rerun to resume')
    self.step = step
    self.exit_code = INTERRUPTED_EXIT_CODE if interrupted else PREEMPTED_EXIT_CODE


def exit_code(err: BaseException, default: int = 1) -> int:
  """The documented exit status for `err` (`default` for errors that are not ours)."""
  return getattr(err, 'exit_code', default) if isinstance(err, SenetError) else default


def write_failure_cause(err: BaseException) -> str | None:
  """The OS's reason ('No space left on device', ...) when `err` is a failed write, else None.
  Any OSError counts as one (its strerror, or its message)."""
  found = _WRITE_FAILURE.search(str(err))
  if found:
    return found.group(0)
  if isinstance(err, OSError):
    return err.strerror or str(err) or type(err).__name__
  return None
