"""Preemption and Ctrl-C: stop at a step all processes agree on, after a committed checkpoint.

With `jax.distributed.initialize()` JAX owns SIGTERM and its preemption sync point tells every
process the same step to stop at, so the loop polls `reached_preemption_sync_point`. In a
single process without the distributed runtime, a SIGTERM handler sets a flag instead.

Ctrl-C (SIGINT) does what SIGTERM does -- checkpoint at the step boundary, one line -- but exits
130 (interrupted by the user) instead of 42 (preempted: a scheduler requeues on 42). A second
Ctrl-C aborts at once, keeping the checkpoints already written.
"""
from __future__ import annotations

import signal
import sys
import threading

from jax.experimental import multihost_utils

# Defined in the errors leaf (every exit status in one place); re-exported for importers.
from senet_jax.errors import (  # noqa: F401
    INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, Preempted)


def distributed_is_initialized() -> bool:
  """True after jax.distributed.initialize() (its preemption sync manager is then active)."""
  from jax._src import distributed
  return distributed.global_state.client is not None


class PreemptionWatcher:
  """Polled once per step: `should_stop(step)` is True at the agreed stopping step."""

  def __init__(self):
    self._requested = threading.Event()
    self.interrupted = False  # True once Ctrl-C asked for the stop
    self._distributed = distributed_is_initialized()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      if not self._distributed:
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

  def _on_sigterm(self, signum, frame):  # noqa: ARG002
    self._requested.set()

  def _on_sigint(self, signum, frame):  # noqa: ARG002
    self.interrupted = True
    print('Ctrl-C: writing a checkpoint at the end of this step, then stopping (Ctrl-C again '
          'to abort at once)', file=sys.stderr, flush=True)
    # The second Ctrl-C is the kernel's default action: it ends the process even inside a long
    # compile or step, where a Python handler would only run once the C++ call returns.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    self._requested.set()

  def close(self) -> None:
    """Gives the signals back to the handlers that were installed before."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def stopped(self, step: int, saved: bool = True) -> Preempted:
    """The exception that ends the run at `step` (exit 42 preempted, 130 Ctrl-C)."""
    return Preempted(step, interrupted=self.interrupted, saved=saved)

  def request(self) -> None:
    """Asks the loop to stop at the next step boundary (tests, other signals)."""
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._distributed:
      return bool(multihost_utils.reached_preemption_sync_point(step)) or self._requested.is_set()
    return self._requested.is_set()
