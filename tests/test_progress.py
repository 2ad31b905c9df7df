"""Trainer output: one line per log step, progress / ETA, compile messages, TensorBoard names."""
import glob
import io
import logging

import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.training import progress


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _steps(p, clock, first, last, seconds=1.0):
  for step in range(first, last + 1):
    clock.now += seconds
    p.step(step, None)


def test_eta_excludes_compilation_and_evaluation_and_adds_remaining_evals(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  p = progress.Progress(total_steps=100, start_step=0, batch_size=64, eval_every=50,
                        interactive=False)
  clock.now = 60.0            # the first step includes a minute of compilation: not timed
  p.step(1, None)
  _steps(p, clock, 2, 11)     # then 1 s per step
  assert p.steps_per_second() == 1.0
  assert p.eta() == '1:29'    # 89 steps left, no eval timed yet
  with p.excluded():          # a 5 s evaluation: not a training step
    clock.now += 5.0
  assert p.steps_per_second() == 1.0
  assert p.eta() == '1:39'    # 89 s + 2 evals (steps 50 and 100) x 5 s


def test_bar_on_a_terminal_and_log_lines_around_it(monkeypatch, caplog):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  stream = io.StringIO()
  p = progress.Progress(10, 0, 32, 10, stream=stream, interactive=True)
  _steps(p, clock, 1, 5)
  assert stream.getvalue().count('\r\x1b[K[') == 4  # redrawn in place after the first step
  assert 'progress: step 5/10 (50%) | 32.0 img/s (1.00 steps/s) | ETA 0:05' in stream.getvalue()
  with caplog.at_level(logging.INFO):
    p.log('step 5/10 | loss 1.0')
    assert stream.getvalue().endswith('step 5/10 (50%) | 32.0 img/s (1.00 steps/s) | ETA 0:05')
    before = len(stream.getvalue())
    progress.log('compiling the eval step ...')  # from code that does not hold the Progress
  assert stream.getvalue()[before:].startswith('\r\x1b[K\r\x1b[K[')  # cleared, redrawn
  assert [r.getMessage() for r in caplog.records] == ['step 5/10 | loss 1.0',
                                                      'compiling the eval step ...']
  p.close()
  assert stream.getvalue().endswith('\r\x1b[K') and progress._active_bar is None


def test_piped_output_has_an_early_estimate_then_sparse_progress_lines(monkeypatch, caplog):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  stream = io.StringIO()
  p = progress.Progress(1000, 0, 8, 1000, stream=stream, interactive=False)
  with caplog.at_level(logging.INFO):
    _steps(p, clock, 1, 100)  # 100 s
  lines = [r.getMessage() for r in caplog.records]
  assert stream.getvalue() == ''  # no carriage returns in a log file
  # Timing starts after step 1 (t = 1 s). The first estimate once 5 steps are timed (step 6,
  # t = 6 s), then whenever more than 30 s have passed: steps 37, 68, 99.
  assert [line.split(' (')[0] for line in lines] == [
      'progress: step 6/1000', 'progress: step 37/1000', 'progress: step 68/1000',
      'progress: step 99/1000']
  assert lines[0].endswith('| 8.0 img/s (1.00 steps/s) | ETA 16:34')  # 994 steps at 1/s


def test_train_line_and_results_format():
  metrics = {'loss': 0.25, 'l2': 0.39, 'top1': 0.9172, 'top5': 0.9969,
             'learning_rate': 8.5e-05, 'grad_norm': 1.81}
  line = progress.train_line(60, 60, metrics, 306.3, 4.79, '0:00')
  assert line == ('step 60/60 | loss 0.2500 | l2 0.3900 | top1 91.72% | top5 99.69% | '
                  'lr 8.5e-05 | grad_norm 1.81 | 306.3 img/s (4.79 steps/s) | ETA 0:00')
  results = {'loss': 0.1304, 'top1': 0.9666, 'top5': 0.9972, 'num_examples': 359.0,
             'ema_loss': 0.1664, 'ema_top1': 0.9443, 'ema_top5': 0.9944,
             'ema_num_examples': 359.0}
  assert progress.format_results(results) == (
      'top1 96.66% | top5 99.72% | loss 0.1304 | 359 images || '
      'EMA: top1 94.43% | top5 99.44% | loss 0.1664 | 359 images')
  assert progress.grouped('train', {'loss': 1.0}) == {'train/loss': 1.0}
  assert progress.format_duration(3723) == '1:02:03'


def test_compile_on_first_call_says_so_and_falls_back_on_new_shapes():
  messages = []
  step = progress.compile_on_first_call(jax.jit(lambda x: 2 * x), 'toy step', messages.append)
  np.testing.assert_array_equal(step(jnp.ones(3)), 2 * np.ones(3))
  np.testing.assert_array_equal(step(jnp.ones(4)), 2 * np.ones(4))  # other shape: the jit
  assert messages[0] == 'compiling the toy step ...'
  assert messages[1].startswith('compiling the toy step ... done in ') and len(messages) == 2


def test_writer_writes_tensorboard_events_and_logs_nothing(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    writer = progress.create_writer(str(tmp_path))
    writer.write_scalars(1, progress.grouped('train', {'loss': 1.0}))
    writer.flush()
  assert glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  assert not [r for r in caplog.records if 'loss' in r.getMessage()]
