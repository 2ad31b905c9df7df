"""One-line messages for command-line mistakes caught while absl parses the flags."""
from __future__ import annotations

import re

from senet_jax.utils.names import suggest


def _chain(err: BaseException) -> list[BaseException]:
  out = [err]
  while (out[-1].__cause__ or out[-1].__context__) is not None and len(out) < 10:
    out.append(out[-1].__cause__ or out[-1].__context__)
  return out


def _config_path(argv: list[str]) -> str:
  """The config file named on the command line (the last one wins, as in absl)."""
  path = ''
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _override_named(key: str, argv: list[str]) -> str:
  """The --config.a.b flag of argv whose last component is `key`."""
  for arg in argv:
    name = arg[2:].split('=', 1)[0]
    if name.startswith('config.') and name.rsplit('.', 1)[-1] == key:
      return name
  return f'config.{key}'


def _hint(text: str) -> str:
  return text.replace('did you mean ', 'did you mean --')


def flag_error_message(err: BaseException, argv: list[str], flag_values) -> str:
  """What went wrong and what to do, naming the flag, field or file (no traceback)."""
  config_file = _config_path(argv) or 'the config'
  for e in _chain(err):
    text = str(e)
    unknown = re.search(r"Unknown command line flag '([^']+)'", text)
    if unknown:
      name = unknown.group(1)
      hint = _hint(suggest(name, list(flag_values)))
      what = f'is not a field of {config_file}' if name.startswith('config.') else 'is not a flag'
      return f'--{name} {what}{hint}'
    if 'Failed loading config file' in text:
      reason = text.strip().splitlines()[-1].strip()
      return (f'--config={_config_path(argv)}: cannot load it ({reason}); give the path of a '
              f'config file such as configs/quickstart.py')
    if isinstance(e, KeyError) and e.args:
      key = str(e.args[0]).split('\n')[0].strip("'\"")
      meant = re.search(r'Did you mean "([^"]+)"', str(e.args[0]))
      name = _override_named(key, argv)
      hint = f'; did you mean --{name.rsplit(".", 1)[0]}.{meant.group(1)}?' if meant else ''
      if name.count('.') > 1 and not meant:
        hint = (f'; {config_file} does not expose it in {name.rsplit(".", 1)[0]} (add it to '
                f'the config file, or use a config that has it)')
      return f'--{name} is not a field of {config_file}{hint}'
    if isinstance(e, (ImportError, SyntaxError)) and _config_path(argv):
      return (f'--config={_config_path(argv)} failed to import: {type(e).__name__}: {e}. '
              f'Run from the repository root, or fix the file')
  text = str(err).strip()
  first = text.splitlines()[0] if text else type(err).__name__
  return f'{first} (see --help)'
