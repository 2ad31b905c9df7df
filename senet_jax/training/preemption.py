"""Preemption: stop at a step all processes agree on, after a committed checkpoint.

With `jax.distributed.initialize()` JAX owns SIGTERM and its preemption sync point tells every
process the same step to stop at, so the loop polls `reached_preemption_sync_point`. In a
single process without the distributed runtime, a SIGTERM handler sets a flag instead.
"""
from __future__ import annotations

import signal
import threading

from jax.experimental import multihost_utils


class Preempted(Exception):
  """Raised after the preemption checkpoint at `step` is committed (main.py exits with 42)."""

  def __init__(self, step: int):
    super().__init__(f'preempted; checkpoint written at step {step}')
    self.step = step


def distributed_is_initialized() -> bool:
  """True after jax.distributed.initialize() (its preemption sync manager is then active)."""
  from jax._src import distributed
  return distributed.global_state.client is not None


class PreemptionWatcher:
  """Polled once per step: `should_stop(step)` is True at the agreed stopping step."""

  def __init__(self):
    self._requested = threading.Event()
    self._distributed = distributed_is_initialized()
    if not self._distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):  # noqa: ARG002
    self._requested.set()

  def request(self) -> None:
    """Asks the loop to stop at the next step boundary (tests, other signals)."""
    self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._distributed:
      return bool(multihost_utils.reached_preemption_sync_point(step)) or self._requested.is_set()
    return self._requested.is_set()
