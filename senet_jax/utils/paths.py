"""Command-line paths that also work outside the clone."""
from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(PACKAGE_DIR)


def resolve_repo_path(path: str, root: str = REPO_ROOT) -> str:
  """`path` if it exists from the working directory, else the same path under the clone, else
  under the installed package (`configs/...`: the configs shipped as senet_jax/configs).

  Lets `--config=configs/quickstart.py` run from any directory, and after `pip install`; a
  path found in none of these places is returned unchanged (the caller's error names it).
  """
  if os.path.isabs(path) or os.path.exists(path):
    return path
  for candidate in (os.path.join(root, path), os.path.join(PACKAGE_DIR, path)):
    if os.path.exists(candidate):
      return candidate
  return path


def resolve_config_flag(argv: list[str], root: str = REPO_ROOT) -> list[str]:
  """argv with the file of `--config=FILE[:variant]` (or `--config FILE`) resolved as above."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + _resolve_spec(arg[len('--config='):], root)
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = _resolve_spec(out[i + 1], root)
  return out


def _resolve_spec(spec: str, root: str) -> str:
  path, sep, variant = spec.partition(':')
  return resolve_repo_path(path, root) + sep + variant
