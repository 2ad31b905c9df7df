"""Silences library log lines that our own usage makes meaningless."""
from __future__ import annotations

import contextlib
import logging

# What orbax warns about on every read-only CheckpointManager, and when a restore takes only some
# of a checkpoint's items (we read 'meta' and the weights separately on purpose).
ORBAX_READ_ONLY = ('read_only=True', 'directory is read only', 'could not be restored')


class _DropMessages(logging.Filter):
  def __init__(self, fragments):
    super().__init__()
    self.fragments = fragments

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    message = record.getMessage()
    return not any(f in message for f in self.fragments)


# What TFDS warns about when it opens a dataset that is not prepared (yet): the dataset is then
# built (senet_digits) or the error names the missing directory.
TFDS_NOT_PREPARED = ('has no dataset_info.json',)


@contextlib.contextmanager
def absl_messages(fragments):
  """Inside: absl log records below ERROR containing any of `fragments` are dropped."""
  logger = logging.getLogger('absl')  # orbax and TFDS log through absl.logging
  drop = _DropMessages(fragments)
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def orbax_read_only():
  """Inside: orbax's warnings about a read-only manager / partial restore are dropped."""
  return absl_messages(ORBAX_READ_ONLY)


def tensorflow_banners() -> None:
  """Before TF is imported: no oneDNN banner (TF prints it once per library it loads).

  TF only decodes and resizes images in senet_jax; its oneDNN kernels change nothing there.
  """
  import os
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def closed_event_loop_reports() -> None:
  """Drops the tracebacks tensorstore reports (through sys.unraisablehook) when a write it had
  started completes after orbax closed its event loop: a failed save, which the caller reports
  in one line. Every other unraisable exception reaches the previous hook unchanged."""
  import sys
  previous = sys.unraisablehook

  def unraisablehook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    previous(unraisable)
  sys.unraisablehook = unraisablehook
