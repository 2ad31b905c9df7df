"""What the trainer prints: one line per log step, live progress with an ETA, compile times.

- `Progress` keeps the step rate (compilation and evaluation excluded) and the ETA. On a
  terminal it redraws one progress bar line in place; when the output is piped it prints a plain
  progress line once the first steps are timed and then at most every `plain_every_s` seconds
  between log lines, so a log file stays one line per log step.
- `compile_on_first_call` wraps a jitted step: its first call lowers and compiles ahead of time
  with a "compiling the train step ... done in N s" message (XLA may take minutes on a large
  model, during which nothing else would be printed).
- `create_writer` writes TensorBoard events (clu's default writer would log every scalar a
  second time, next to the trainer's own line), and W&B when configured (training/writers.py).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Callable

import jax

ACCURACY_KEYS = ('top1', 'top5')
_active_bar = None  # the Progress whose bar is on the terminal, cleared around other lines


def log(message: str) -> None:
  """Logs a line on process 0 without garbling a progress bar that is on the terminal."""
  if _active_bar is not None:
    _active_bar.log(message)
  elif _is_main():
    logging.info(message)


def _is_main() -> bool:
  return jax.process_index() == 0


def format_duration(seconds: float) -> str:
  """'0:07', '12:05', '1:02:03' (h:mm:ss, hours only when needed)."""
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


def create_writer(workdir: str, config=None):
  """TensorBoard event files in `workdir` on process 0 (no logging writer), plus W&B when
  `config.wandb_project` is set; nothing on other processes."""
  from senet_jax.training import writers
  return writers.create(workdir, config, is_main=_is_main())


def grouped(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
  """TensorBoard names: {'loss': x} -> {'train/loss': x} (one chart group per prefix)."""
  return {f'{prefix}/{k}': v for k, v in metrics.items()}


def train_line(step: int, total: int, metrics: dict[str, float], images_per_s: float,
               steps_per_s: float, eta: str | None) -> str:
  """The trainer's one line per log step (loss = cross-entropy; l2 is logged beside it).

  With several devices the line adds img/s per device, and MFU when `metrics` has 'mfu'
  (training/mfu.py: only when the device's peak FLOP/s is known).
  """
  parts = [f'step {step}/{total}', f'loss {metrics["loss"]:.4f}']
  if 'l2' in metrics:
    parts.append(f'l2 {metrics["l2"]:.4f}')
  parts += [f'top1 {100 * metrics["top1"]:.2f}%', f'top5 {100 * metrics["top5"]:.2f}%',
            f'lr {metrics["learning_rate"]:.5g}', f'grad_norm {metrics["grad_norm"]:.3g}',
            f'{images_per_s:.1f} img/s ({steps_per_s:.2f} steps/s)']
  per_device = metrics.get('images_per_second_per_device')
  if per_device is not None and abs(per_device - images_per_s) > 1e-9 * images_per_s:
    parts.append(f'{per_device:.1f} img/s/device')  # on one device it would repeat img/s
  if 'mfu' in metrics:
    parts.append(f'MFU {100 * metrics["mfu"]:.3g}%')
  if eta:
    parts.append(f'ETA {eta}')
  return ' | '.join(parts)


# Every evaluator's metrics (evaluation.metrics.SuiteMetrics), in the order they are shown.
RESULT_ORDER = {'top1': 0, 'top5': 1, 'loss': 2, 'ece': 3, 'num_examples': 9}


def _split_result_key(key: str) -> tuple[str, bool, str]:
  """'ema_real_top1' -> ('real', True, 'top1'): evaluator (main: ''), EMA weights, metric
  (the names of evaluation.metric_key)."""
  ema = key.startswith('ema_')
  name = key[4:] if ema else key
  for metric in RESULT_ORDER:
    if name.endswith('_' + metric):
      return name[:-len(metric) - 1], ema, metric
  return '', ema, name


def _format_metric(name: str, value: float) -> str:
  if name == 'num_examples':
    return f'{int(value)} images'
  return f'{name} {100 * value:.2f}%' if name in ACCURACY_KEYS else f'{name} {value:.4f}'


def format_results(results: dict[str, float]) -> str:
  """Eval results grouped by evaluator and weights, each group alike: 'top1 98.89% | top5
  100.00% | loss 0.0377 | ece 0.0152 | 359 images || EMA: ... || real: ... || real EMA: ...'."""
  groups: dict[tuple[str, bool], list[tuple[str, float]]] = {}
  for key, value in results.items():
    evaluator, ema, metric = _split_result_key(key)
    groups.setdefault((evaluator, ema), []).append((metric, value))
  parts = []
  for evaluator, ema in sorted(groups, key=lambda g: (g[0] != '', g[0], g[1])):
    metrics = sorted(groups[evaluator, ema], key=lambda m: (RESULT_ORDER.get(m[0], 5), m[0]))
    text = ' | '.join(_format_metric(name, value) for name, value in metrics)
    label = ' '.join(part for part in (evaluator, 'EMA' if ema else '') if part)
    parts.append(f'{label}: {text}' if label else text)
  return ' || '.join(parts)


def loss_legend(label_smoothing: float, weight_decay: float) -> str:
  """One line naming what the logged loss terms are."""
  smooth = f' against targets smoothed by {label_smoothing:g}' if label_smoothing else ''
  return (f'train loss = cross-entropy{smooth}; l2 = weight_decay ({weight_decay:g}) x the L2 '
          'penalty, added to the loss for the gradient (eval loss: plain cross-entropy)')


def compile_on_first_call(jitted, name: str, log: Callable[[str], None]):
  """`jitted` whose first call compiles ahead of time, saying so and how long it took.

  Later calls use the compiled executable; a call with other shapes or shardings (which would
  make XLA compile again) falls back to `jitted`.
  """
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      log(f'compiling the {name} ...')
      t0 = time.perf_counter()
      compiled = jitted.lower(*args).compile()
      log(f'compiling the {name} ... done in {time.perf_counter() - t0:.1f} s')
    try:
      return compiled(*args)
    except (TypeError, ValueError):  # raised before running: other shapes or shardings
      return jitted(*args)

  return call


class Progress:
  """Step rate and ETA (compilation and evaluation excluded); a bar on a terminal."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, eval_every: int,
               stream=None, interactive: bool | None = None, plain_every_s: float = 30.0):
    self.total, self.start, self.batch_size = total_steps, start_step, batch_size
    self.eval_every = max(eval_every, 1)
    self.stream = stream or sys.stderr
    if interactive is None:
      interactive = bool(getattr(self.stream, 'isatty', lambda: False)())
    self.interactive = interactive and _is_main()
    self.plain_every_s = plain_every_s
    self._timed_from = None     # (step, time) once the first step has run
    self._excluded = 0.0        # seconds of evaluation etc. since then
    self._eval_seconds = []
    self._last_plain = None     # time of the last plain line or log line
    self._last_draw = 0.0
    self._bar_shown = False
    self._pending = None        # the previous step's output: block on it, keep one in flight
    self._window = None         # (step, time, excluded) at the last window_steps_per_second
    self.step_number = start_step

  # ---- rates --------------------------------------------------------------------------
  def steps_per_second(self) -> float | None:
    """Training steps per second since the first step (None until two steps have run)."""
    if self._timed_from is None:
      return None
    steps = self.step_number - self._timed_from[0]
    seconds = time.perf_counter() - self._timed_from[1] - self._excluded
    return steps / seconds if steps > 0 and seconds > 0 else None

  def window_steps_per_second(self) -> float | None:
    """Steps per second since the previous call (the first: since the first step), time in
    `excluded()` (evaluation) left out; None until a step has been timed."""
    if self._timed_from is None:
      return None
    now = time.perf_counter()
    step0, t0, excluded0 = self._window or (*self._timed_from, 0.0)
    self._window = (self.step_number, now, self._excluded)
    steps, seconds = self.step_number - step0, now - t0 - (self._excluded - excluded0)
    return steps / seconds if steps > 0 and seconds > 0 else None

  def eta_seconds(self) -> float | None:
    """Seconds left: remaining steps at the current rate plus the remaining evaluations."""
    rate = self.steps_per_second()
    if rate is None:
      return None
    step = self.step_number
    evals_left = self.total // self.eval_every - step // self.eval_every
    evals_left += 1 if self.total % self.eval_every else 0
    eval_s = (sum(self._eval_seconds) / len(self._eval_seconds)) if self._eval_seconds else 0.0
    return (self.total - step) / rate + max(evals_left, 0) * eval_s

  def eta(self) -> str | None:
    """The ETA as h:mm:ss, or None before it can be estimated."""
    seconds = self.eta_seconds()
    return None if seconds is None else format_duration(seconds)

  # ---- events -------------------------------------------------------------------------
  def step(self, step: int, outputs: Any = None) -> None:
    """Called after each dispatched step with its outputs (blocked on one step later)."""
    self.step_number = step
    if self._timed_from is None:
      # The first step's duration holds one-off work (warm-up, input start): time from its end.
      jax.block_until_ready(outputs)
      now = time.perf_counter()
      self._timed_from, self._last_plain = (step, now), now
      return
    if self._pending is not None:
      jax.block_until_ready(self._pending)  # time real compute, not asynchronous dispatch
    self._pending = outputs
    now = time.perf_counter()
    if self.interactive:
      if now - self._last_draw > 0.2 or step == self.total:
        self._draw()
    elif _is_main() and now - self._last_plain > self._plain_interval(step):
      self._write_line(self._status())
      self._last_plain = now

  def _plain_interval(self, step: int) -> float:
    # The first estimate as soon as a few steps are timed, then every plain_every_s.
    first = self._last_plain == self._timed_from[1] and step - self._timed_from[0] >= 5
    return 2.0 if first else self.plain_every_s

  @contextlib.contextmanager
  def excluded(self, is_eval: bool = True):
    """Time spent inside (evaluation) does not count against the training step rate."""
    t0 = time.perf_counter()
    try:
      yield
    finally:
      seconds = time.perf_counter() - t0
      if self._timed_from is not None:
        self._excluded += seconds
      if is_eval:
        self._eval_seconds.append(seconds)

  def log(self, message: str) -> None:
    """Logs a line (process 0), clearing and redrawing the bar around it on a terminal."""
    if not _is_main():
      return
    self._clear()
    logging.info(message)
    self._last_plain = time.perf_counter()
    if self.interactive and self._timed_from is not None:
      self._draw()

  def close(self) -> None:
    """Ends the bar line (terminal)."""
    self._clear()

  # ---- drawing ------------------------------------------------------------------------
  def _status(self) -> str:
    rate = self.steps_per_second()
    pct = 100.0 * self.step_number / max(self.total, 1)
    text = f'progress: step {self.step_number}/{self.total} ({pct:.0f}%)'
    if rate:
      text += (f' | {rate * self.batch_size:.1f} img/s ({rate:.2f} steps/s) | '
               f'ETA {self.eta()}')
    return text

  def _draw(self) -> None:
    width = 24
    done = int(width * self.step_number / max(self.total, 1))
    bar = '#' * done + '.' * (width - done)
    self.stream.write(f'\r\x1b[K[{bar}] {self._status()}')
    self.stream.flush()
    self._bar_shown, self._last_draw = True, time.perf_counter()
    global _active_bar
    _active_bar = self

  def _clear(self) -> None:
    global _active_bar
    if self._bar_shown:
      self.stream.write('\r\x1b[K')
      self.stream.flush()
      self._bar_shown = False
    if _active_bar is self:
      _active_bar = None

  def _write_line(self, text: str) -> None:
    logging.info(text)
