"""The command-line convention of every tool (`senet-<tool>`, `python -m senet_jax.tools.<tool>`).

`main.py` keeps absl (ml_collections' `--config.field=value` overrides need it); the tools
(predict, summary, sweep, excitation, cam, complexity, evaluate; the packages convert and export)
all use this:

- `parser(__doc__)`: argparse, the module docstring as `--help`, and `--verbose` (alias
  `--debug`) to add the traceback to an error;
- a mistake in the arguments (unknown flag, a value of the wrong type, a missing required flag)
  is one line `error: ... (see --help)` on stderr and exit status 2 (not argparse's usage block);
- `run(body, args)` calls `body(args)`; an expected failure becomes one `error: <message>` line
  and the exit status below. Anything else is a bug and propagates with its traceback (exit 1).

Exit statuses (the same numbers as main.py's where they overlap):
  0  done
  1  unexpected error (a bug: please report it with the traceback)
  2  bad arguments or input: a flag value, a file that is missing, unreadable or not what was
     expected (an image, a weights file, a config), an unknown model or dataset. Tools that take
     several files still process the others, name each bad one, then exit 2
  4  missing or unusable checkpoint, or an output that could not be written (disk full,
     permission, I/O): nothing is left at the output path
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

from senet_jax import errors
from senet_jax.utils import quiet

DONE, UNEXPECTED, BAD_INPUT, BAD_CHECKPOINT = 0, 1, 2, 4


class UsageError(ValueError):
  """A bad argument value or input noticed after parsing (exit 2); the message names it."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are one `error:` line and exit status 2."""

  def error(self, message: str):
    self.exit(BAD_INPUT, f'error: {message} (see --help)\n')


def parser(doc: str | None, **kwargs) -> ArgumentParser:
  """A tool's parser: `doc` (the module docstring) as help, plus `--verbose` / `--debug`.

  Every tool makes its parser before its work imports TensorFlow: TensorFlow's oneDNN banners
  and C++ INFO lines are silenced here, for all of them (main.py does the same).
  """
  quiet.tensorflow_banners()
  p = ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter, **kwargs)
  p.add_argument('--verbose', '--debug', action='store_true',
                 help='print the traceback of an error, not only its one-line message')
  return p


def exit_code(err: BaseException) -> int | None:
  """The exit status of an expected error, None for an unexpected one (a bug)."""
  if isinstance(err, errors.SenetError):  # ours: the status it declares (senet_jax/errors.py)
    return errors.exit_code(err)
  if isinstance(err, (ValueError, OSError)):  # config / input mistakes, unreadable files
    return BAD_INPUT
  return None


def fail(err: BaseException, code: int, verbose: bool = False) -> int:
  """Prints `error: <err>` (after its traceback with --verbose); returns `code`."""
  if verbose:
    traceback.print_exception(err)
  print(f'error: {err}', file=sys.stderr)
  return code


def run(body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
  """`body(args)` (None counts as 0), with expected errors as one line and their exit code.

  A tool run as a command (`senet-<tool>`, `python -m senet_jax.tools.<tool>`) is first restarted
  under the fast allocator, as main.py is (only before JAX starts; never under pytest).
  """
  from senet_jax.utils import allocator, quiet
  allocator.reexec_for_script()
  if not getattr(args, 'verbose', False):
    quiet.closed_event_loop_reports()
  try:
    return body(args) or DONE
  except Exception as err:  # noqa: BLE001 - re-raised below unless it is an expected error
    code = exit_code(err)
    if code is None:
      raise
    return fail(err, code, getattr(args, 'verbose', False))


def report_skipped(errors: list[str]) -> int:
  """One `error:` line per input that was skipped; the exit status of the whole run."""
  for error in errors:
    print(f'error: {error}', file=sys.stderr)
  return BAD_INPUT if errors else DONE


_MOVED_NOTED = 'SENET_MOVED_NOTE_PID'  # the process that printed the note (kept across a restart)


def run_moved(old: str, new: str, main: Callable[[], int]) -> int:
  """`python -m OLD` of a tool that moved to NEW (kept for one release): one `note:` line on
  stderr, then NEW's `main()` and its exit status.

  `run` may restart the process under the fast allocator (same pid, same command line), which
  runs this again: the note is printed once per process id, not once per start.
  """
  if os.environ.get(_MOVED_NOTED) != str(os.getpid()):
    print(f'note: python -m {old} is now python -m {new}; the old path goes in the next release',
          file=sys.stderr, flush=True)
    os.environ[_MOVED_NOTED] = str(os.getpid())
  return main()
