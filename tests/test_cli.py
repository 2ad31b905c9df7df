"""The tools' one command-line convention (senet_jax/utils/cli.py): `error:` lines, exit codes."""
import importlib
import os
import subprocess
import sys

import pytest

from senet_jax.utils import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every tool, as `python -m` runs it (convert and export are packages with __main__).
TOOL_MODULES = {'predict': 'senet_jax.tools.predict', 'summary': 'senet_jax.tools.summary',
                'sweep': 'senet_jax.tools.sweep', 'validate': 'senet_jax.tools.evaluate',
                'complexity': 'senet_jax.tools.complexity',
                'excitation': 'senet_jax.tools.excitation',
                'cam': 'senet_jax.tools.cam', 'convert': 'senet_jax.convert.__main__',
                'export': 'senet_jax.export.__main__'}
# The tools' paths before senet_jax/tools/ (issue 32), kept for one release: old -> new.
MOVED = {'senet_jax.predict': 'senet_jax.tools.predict',
         'senet_jax.summary': 'senet_jax.tools.summary',
         'senet_jax.sweep': 'senet_jax.tools.sweep',
         'senet_jax.validate': 'senet_jax.tools.evaluate',
         'senet_jax.complexity': 'senet_jax.tools.complexity',
         'senet_jax.excitation': 'senet_jax.tools.excitation',
         'senet_jax.cam': 'senet_jax.tools.cam'}


@pytest.mark.parametrize('tool', sorted(TOOL_MODULES))
def test_every_tool_reports_a_bad_flag_in_one_line_with_exit_2(tool, capsys):
  main = importlib.import_module(TOOL_MODULES[tool]).main
  with pytest.raises(SystemExit) as exit_:
    main(['--no_such_flag=1'])
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2
  # (tools with required flags name those first, as argparse checks them first)
  assert len(err) == 1 and err[0].startswith('error: ') and err[0].endswith('(see --help)'), err


@pytest.mark.parametrize('tool', sorted(TOOL_MODULES))
def test_every_tool_has_verbose_and_its_docstring_as_help(tool, capsys):
  module = importlib.import_module(TOOL_MODULES[tool])
  with pytest.raises(SystemExit) as exit_:
    module.main(['--help'])
  out = capsys.readouterr().out
  assert exit_.value.code == 0
  assert '--verbose, --debug' in out
  assert module.__doc__.strip().splitlines()[0].strip() in out


def test_unknown_flag_wrong_type_and_missing_required_flag_are_one_line(capsys):
  from senet_jax.tools import complexity, predict
  with pytest.raises(SystemExit) as exit_:
    complexity.main(['--modles=resnet50'])
  assert capsys.readouterr().err == (
      'error: unrecognized arguments: --modles=resnet50 (see --help)\n')
  assert exit_.value.code == 2
  for argv, expected in ((['--checkpoint=x', '--top=five', 'a.png'], "--top: invalid int value"),
                         (['a.png'], 'the following arguments are required: --checkpoint')):
    with pytest.raises(SystemExit) as exit_:
      predict.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and expected in err[0], err


def _parsed(*argv):
  p = cli.parser('doc')
  return p.parse_args(list(argv))


def test_expected_errors_become_one_line_and_their_exit_code(capsys):
  from senet_jax.training.checkpoint import CheckpointError, CheckpointMismatchError

  def raising(err):
    def body(args):
      raise err
    return body
  cases = [(ValueError('--x=3: expected 0..2'), 2), (FileNotFoundError('a.png: missing'), 2),
           (cli.UsageError('bad value'), 2), (CheckpointError('no checkpoint found under d'), 4),
           # another model's checkpoint is a config mistake, as in main.py
           (CheckpointMismatchError('saved se_resnet50, configured resnet50'), 2)]
  for err, code in cases:
    assert cli.run(raising(err), _parsed()) == code
    assert capsys.readouterr().err == f'error: {err}\n'
  assert cli.run(lambda args: None, _parsed()) == 0
  assert cli.run(lambda args: 0, _parsed()) == 0


def test_verbose_adds_the_traceback_and_bugs_are_not_hidden(capsys):
  def body(args):
    raise ValueError('bad --x')
  assert cli.run(body, _parsed('--verbose')) == 2
  err = capsys.readouterr().err
  assert 'Traceback (most recent call last)' in err and err.endswith('error: bad --x\n')

  def buggy(args):
    raise KeyError('oops')  # not an expected error: propagates (Python exits 1, traceback)
  with pytest.raises(KeyError):
    cli.run(buggy, _parsed())


def test_skipped_inputs_are_named_and_exit_2(capsys):
  assert cli.report_skipped([]) == 0
  assert cli.report_skipped(['a.png: not an image', 'b.jpg: cannot read it']) == 2
  assert capsys.readouterr().err.splitlines() == ['error: a.png: not an image',
                                                  'error: b.jpg: cannot read it']


def test_every_exit_status_is_declared_in_the_errors_leaf():
  # The documented statuses (README, Fault tolerance): 2 config, 3 non-finite, 4 checkpoint or
  # output, 5 workdir held by another run, 42 preempted, 130 Ctrl-C -- read from errors.py's
  # types, whatever module raises them.
  from senet_jax import errors
  from senet_jax.training import preemption, workdir_lock
  assert workdir_lock.WorkdirLockedError is errors.WorkdirLockedError
  assert preemption.Preempted is errors.Preempted
  assert [errors.exit_code(e('x')) for e in (
      errors.ConfigError, errors.NonFiniteError, errors.CheckpointError,
      errors.OutputWriteError, errors.WorkdirLockedError)] == [2, 3, 4, 4, 5]
  assert errors.Preempted(7).exit_code == 42
  assert errors.Preempted(7, interrupted=True).exit_code == 130
  assert str(errors.Preempted(7)) == 'preempted; checkpoint written at step 7'


def _note(old):
  return (f'note: python -m {old} is now python -m {MOVED[old]}; the old path goes in the next '
          'release\n')


@pytest.mark.filterwarnings('ignore:.*found in sys.modules')
@pytest.mark.parametrize('old', sorted(MOVED))
def test_every_old_tool_path_reexports_the_tool_and_runs_it_after_one_note(old, capsys,
                                                                            monkeypatch):
  import runpy
  new = importlib.import_module(MOVED[old])
  shim = importlib.import_module(old)
  assert capsys.readouterr() == ('', '')  # importing an old path prints nothing
  public = {name for name in vars(new) if not name.startswith('_')}
  assert public <= set(vars(shim)) and shim.main is new.main
  monkeypatch.setenv('SENET_MOVED_NOTE_PID', '')  # as in a process that printed nothing yet
  monkeypatch.setattr(sys, 'argv', [old, '--help'])
  with pytest.raises(SystemExit) as exit_:
    runpy.run_module(old, run_name='__main__', alter_sys=True)
  out, err = capsys.readouterr()
  assert exit_.value.code == 0 and err == _note(old)
  assert new.__doc__.strip().splitlines()[0].strip() in out and '--verbose, --debug' in out


def test_an_old_path_run_with_python_m_notes_once_and_exits_as_the_new_one():
  # Outside pytest the tool restarts itself under the fast allocator (same pid, same command
  # line): the note is still one line. Without LD_PRELOAD, as a user's shell starts it.
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'SENET_NO_JEMALLOC', 'SENET_MOVED_NOTE_PID')}
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=ROOT, env=env, timeout=300,
                                     capture_output=True, text=True)
  imported = run('-c', 'import senet_jax.complexity, senet_jax.validate, senet_jax.sweep')
  assert (imported.returncode, imported.stdout, imported.stderr) == (0, '', '')
  for argv in (['--models=resnet18'], ['--no_such_flag=1']):
    old = run('-m', 'senet_jax.complexity', *argv)
    new = run('-m', 'senet_jax.tools.complexity', *argv)
    assert old.returncode == new.returncode == (0 if argv[0].startswith('--models') else 2)
    assert old.stdout == new.stdout and 'note:' not in new.stderr
    assert old.stderr == _note('senet_jax.complexity') + new.stderr, old.stderr
