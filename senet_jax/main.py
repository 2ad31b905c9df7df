r"""`senet-train` (in a checkout: `python main.py`): train and evaluate a senet_jax model.

    senet-train --config=configs/quickstart.py --workdir=/tmp/qs     # a config shipped with
    senet-train --config=configs/efficientnet_b3.py --workdir=/tmp/b3 \
        --config.batch_size=1024 --config.data_dir=/data/tfds          # the package, or
    senet-train --config=/path/to/my_config.py --workdir=/tmp/mine    # any config file

`configs/NAME.py` is looked up in the working directory, then in the checkout, then among the
configs installed with the package (senet_jax/configs: the checkout's configs/ itself). A config
file of your own imports the shipped ones as `from senet_jax.configs import default`.

Multi-process (one process per host, or several on one machine): set
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the same as
SENET_COORDINATOR_ADDRESS / SENET_NUM_PROCESSES / SENET_PROCESS_ID); on Cloud TPU pods and
SLURM `--distributed` lets JAX discover them. Exit codes: 0 done, 1 unexpected error, 2 bad
config (or a checkpoint of another model/config, or a step that cannot fit in memory), 3
non-finite loss or state (never saved), 4 unusable or unwritable checkpoint (disk full,
damaged), 5 workdir in use by another run, 42 preempted by SIGTERM (after writing a checkpoint,
or before training started), 130 Ctrl-C (after writing a checkpoint; a second Ctrl-C aborts at
once). Errors are one line; --verbose adds the traceback.
"""
import os
import signal
import sys

FLAGS = None  # absl's flags, defined by run() (importing this module defines nothing)


def _stopped_while_starting(signum, frame):  # noqa: ARG001
  # Nothing is written before the trainer installs its own handlers: stop now.
  interrupted = signum == signal.SIGINT
  print(f'{"interrupted" if interrupted else "preempted"} while starting; nothing to save',
        file=sys.stderr)
  os._exit(130 if interrupted else 42)


def _define_flags():
  global FLAGS
  from absl import flags
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and eval results.')
  flags.DEFINE_enum('mode', 'train_and_eval', ['train_and_eval', 'eval'],
                    'train_and_eval, or eval only (the latest checkpoint in workdir).')
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with auto-detection.')
  flags.DEFINE_string('coordinator_address', os.environ.get('SENET_COORDINATOR_ADDRESS'),
                      'host:port of process 0 for multi-process runs.')
  flags.DEFINE_integer('num_processes', int(os.environ.get('SENET_NUM_PROCESSES', '0')) or None,
                       'Number of processes.')
  flags.DEFINE_integer('process_id', int(os.environ.get('SENET_PROCESS_ID', '-1')),
                       'This process (0..num_processes-1).')
  flags.DEFINE_bool('verbose', False, 'Print tracebacks of errors (alias: --debug).')
  flags.DEFINE_alias('debug', 'verbose')
  flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops INFO chatter of orbax (one line per file written), TFDS and JAX's backend search,
  and (without --verbose) every orbax record: its failures reach the user as our own one-line
  CheckpointError, and its tracebacks from background threads would bury that line."""
  NOISY = ('/orbax/', '/tensorflow_datasets/', 'xla_bridge.py')

  def filter(self, record) -> bool:
    import logging as py_logging
    if '/orbax/' in record.pathname and not FLAGS.verbose:
      return False
    return record.levelno >= py_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def _init_distributed() -> None:
  import jax
  if FLAGS.coordinator_address or FLAGS.distributed:
    # JAX's preemption notifier owns SIGTERM from here on (see training/preemption.py).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  if FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def main(argv):
  """absl's main: validates the config, then trains (or evaluates) into --workdir."""
  from absl import app, logging
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if not FLAGS.verbose:
    from senet_jax.utils import quiet
    quiet.closed_event_loop_reports()
  from senet_jax.training import validate  # no TensorFlow yet: bad values fail in seconds
  try:
    validate.validate_fields(FLAGS.config, eval_only=FLAGS.mode == 'eval')
  except validate.ConfigError as err:
    _fail(err, 2, 'bad config: ')
  # TensorFlow is imported only where it is used (not by config.input_backend='grain').
  from senet_jax.utils import tf_host
  tf_host.hide_accelerators_on_import()
  _init_distributed()
  from senet_jax import errors
  from senet_jax.training import preemption, trainer  # after distributed init
  config = FLAGS.config
  try:
    results = (trainer.evaluate_only(config, FLAGS.workdir) if FLAGS.mode == 'eval'
               else trainer.train_and_evaluate(config, FLAGS.workdir))
  except preemption.Preempted as err:
    logging.warning('%s', err)
    _exit(err.exit_code)
  except errors.SenetError as err:
    # The error's own status (errors.py): a checkpoint of another model is a CheckpointError
    # and a config mistake, and exits 2; a workdir held by another run exits 5.
    code = errors.exit_code(err)
    _fail(err, code, 'bad config: ' if code == 2 else '')
  from senet_jax.training import progress
  print(f'final eval: {progress.format_results(results)}')


def _exit(code: int) -> None:
  """Ends the process now: the run's lock is released and its files are closed by then.

  os._exit rather than sys.exit: after a failed save, orbax's background threads may never
  finish, and the interpreter would wait for them at shutdown (a hung job instead of exit 4).
  """
  from absl import logging
  sys.stdout.flush()
  sys.stderr.flush()
  logging.flush()
  os._exit(code)


def _fail(err: BaseException, code: int, prefix: str = '') -> None:
  """One `error:` line on stderr (the traceback only with --verbose), then exit `code`."""
  if FLAGS.is_parsed() and FLAGS.verbose:
    import traceback
    traceback.print_exception(err)
  print(f'error: {prefix}{err}', file=sys.stderr)
  _exit(code)


def _parse_flags(argv):
  """absl flag parsing, with a config file or field error as one line and exit status 2."""
  from absl import app
  try:
    remaining = FLAGS(argv)
    if FLAGS.config is None or not list(FLAGS.config.keys()):  # loads it (deferred)
      raise app.UsageError('--config=FILE is required, e.g. --config=configs/quickstart.py')
    return remaining
  except Exception as err:  # noqa: BLE001 - every parse failure is a usage error
    from senet_jax.training.cli_errors import flag_error_message
    if '--verbose' in argv or '--debug' in argv:
      import traceback
      traceback.print_exception(err)
    print(f'error: {flag_error_message(err, argv, FLAGS)}', file=sys.stderr)
    sys.exit(2)


def run(argv=None) -> None:
  """The command line (`senet-train`, `python main.py`, `python -m senet_jax.main`)."""
  signal.signal(signal.SIGTERM, _stopped_while_starting)  # imports take seconds
  signal.signal(signal.SIGINT, _stopped_while_starting)
  # Before anything allocates: XLA:CPU is much faster on jemalloc / mimalloc.
  from senet_jax.utils import allocator, paths, quiet, xla_flags
  env = allocator.jemalloc_env()
  if env is not None:  # the command line as python got it: `python -m senet_jax.main` stays -m
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  xla_flags.configure_xla_cpu()  # Eigen convolutions: faster than YNNPACK's on CPU
  quiet.tensorflow_banners()  # if TensorFlow is loaded (tf.data backend), no banners
  from absl import app
  _define_flags()
  sys.modules['__main__'].__doc__ = __doc__  # absl's --help prints it (senet-train's has none)
  argv = list(sys.argv if argv is None else argv)
  try:
    app.run(main, argv=paths.resolve_config_flag(argv), flags_parser=_parse_flags)
  except SystemExit as stop:  # absl ends --help with status 1; a help that was asked for is 0
    if stop.code == 1 and any(a in ('--help', '-h', '-?', '--helpshort', '--helpfull')
                              for a in argv[1:]):
      sys.exit(0)
    raise


if __name__ == '__main__':
  run()
