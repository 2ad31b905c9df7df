"""A JAX profiler trace of chosen training steps, on process 0, into workdir/profile.

`config.profile_steps=(start, end)` traces the steps that take the step counter from `start`
to `end` (the log lines' numbering: (100, 105) traces steps 101..105), input included; each
step is named in the trace (StepTraceAnnotation) for xprof's step-time view. A run resumed
inside the window traces from its first step; one resumed after it traces nothing. The old
switch `config.profile=True` means (first step + 10, first step + 15) when profile_steps is ().

View: `tensorboard --logdir=WORKDIR/profile` (Profile tab, from the tensorboard-plugin-profile
package) or `xprof --logdir=WORKDIR/profile`. The trace files are
WORKDIR/profile/plugins/profile/<time>/<host>.xplane.pb.
"""
from __future__ import annotations

import contextlib
import logging
import os

import jax

LEGACY_WINDOW = (10, 15)  # config.profile=True: steps 11..15 after the run's first step


def window(config, start_step: int) -> tuple[int, int] | None:
  """(start, end) of the trace for a run starting at `start_step`, or None (off / passed)."""
  steps = tuple(config.get('profile_steps', ()) or ())
  if not steps and config.get('profile', False):
    steps = (start_step + LEGACY_WINDOW[0], start_step + LEGACY_WINDOW[1])
  if not steps or start_step >= steps[1]:
    return None
  return max(steps[0], start_step), steps[1]


class StepProfiler:
  """Call `before(step)` before fetching the batch of the step after `step`, and
  `after(step, outputs)` once the counter is `step` (outputs: anything to block on)."""

  def __init__(self, steps: tuple[int, int] | None, logdir: str, enabled: bool = True,
               last_step: int | None = None, paused=contextlib.nullcontext):
    self.steps = steps if enabled else None
    self.logdir = logdir
    self.last_step = last_step  # a run shorter than the window stops its trace at its end
    # Starting and writing the trace take seconds: `paused()` keeps them out of the step rate.
    self.paused = paused
    self.active = False
    self._annotation = None

  @classmethod
  def from_config(cls, config, workdir: str, start_step: int, total_steps: int,
                  paused=contextlib.nullcontext) -> 'StepProfiler':
    """The trainer's profiler: process 0 only, traces in workdir/profile."""
    return cls(window(config, start_step), os.path.join(workdir, 'profile'),
               enabled=jax.process_index() == 0, last_step=total_steps, paused=paused)

  def before(self, step: int) -> None:
    """Starts the trace when `step` is the window's start; names the step about to run."""
    if self.steps is None:
      return
    if not self.active and self.steps[0] <= step < self.steps[1]:
      with self.paused():
        os.makedirs(self.logdir, exist_ok=True)
        jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info('profiler: tracing steps %d-%d into %s', step + 1, self._end(), self.logdir)
    if self.active:
      self._annotation = jax.profiler.StepTraceAnnotation('train', step_num=step + 1)
      self._annotation.__enter__()

  def after(self, step: int, outputs=None) -> None:
    """Ends the step's annotation; stops the trace (after the step's work) at the window's end."""
    if not self.active:
      return
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
    if step >= self._end():
      self.close(outputs)

  def close(self, outputs=None) -> None:
    """Waits for `outputs`, then writes the trace (also on an early stop, e.g. preemption)."""
    if not self.active:
      return
    jax.block_until_ready(outputs)
    with self.paused():
      jax.profiler.stop_trace()
    self.active, self.steps = False, None
    logging.info('profiler: trace written under %s (tensorboard --logdir=%s, Profile tab)',
                 self.logdir, self.logdir)

  def _end(self) -> int:
    return min(self.steps[1], self.last_step) if self.last_step else self.steps[1]
