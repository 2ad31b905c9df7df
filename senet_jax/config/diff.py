"""On resume: compare the config saved in the checkpoint with the one given now.

A field that changes what the run computes (model, batch, optimizer, schedule, dtype, data,
augmentation, seed, ...) makes the resumed run a different experiment than its checkpoints
say, so it is an error unless `config.allow_config_change=True`, which records the change in
`workdir/config_changes.json`. Fields that only change logging, evaluation cadence,
checkpointing or speed pass with a note. Which is which: each field's `harmless` in schema.py.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from senet_jax.config import schema
from senet_jax.errors import ConfigError

# The fields whose change leaves the trained weights as they are (or only within float
# rounding): those with harmless=True in schema.py.
HARMLESS = schema.HARMLESS

# Fields removed from the schema that never had an effect (nothing read them): a
# checkpoint whose saved config still lists them resumes without a "config changed" error.
REMOVED = frozenset({'shuffle_buffer', 'cache_train'})


class ConfigChangedError(ConfigError):
  """The resumed config changes the training trajectory (exit 2)."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _normalise(value):
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  if isinstance(value, float) and value.is_integer():
    return int(value)  # JSON round trips may turn 1.0 into 1
  return value


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (saved value, new value)} for every field that differs (dotted names)."""
  old, new = _flatten(saved), _flatten(current)
  pairs = {k: (old.get(k, '<absent>'), new.get(k, '<absent>')) for k in sorted(set(old) | set(new))}
  return {k: (a, b) for k, (a, b) in pairs.items() if _normalise(a) != _normalise(b)}


def is_harmless(field: str) -> bool:
  """True for fields that leave the training trajectory unchanged (dotted names allowed)."""
  return field.split('.')[0] in REMOVED or schema.is_harmless(field)


def check_resume_config(saved_json: str | None, config, workdir: str, step: int,
                        record: bool) -> None:
  """Raises ConfigChangedError for trajectory-changing differences unless allowed.

  `saved_json` is the config JSON stored in the checkpoint's meta record (None: an older
  checkpoint without it, nothing to compare). With config.allow_config_change the change is
  logged and, when `record`, appended to workdir/config_changes.json.
  """
  if not saved_json:
    return
  try:
    saved = json.loads(saved_json)
  except ValueError:
    logging.warning('the config saved with checkpoint %d is unreadable; not compared', step)
    return
  changes = config_changes(saved, json.loads(config.to_json_best_effort()))
  if not changes:
    return
  risky = {k: v for k, v in changes.items() if not is_harmless(k)}
  harmless = {k: v for k, v in changes.items() if is_harmless(k)}
  if harmless:
    logging.info('resuming with changed settings (no effect on training): %s', _fmt(harmless))
  if not risky:
    return
  if not config.get('allow_config_change', False):
    raise ConfigChangedError(
        f'resuming {workdir} at step {step} with a different config: {_fmt(risky)}. Rerun '
        f'with the saved values, use another --workdir, or pass '
        f'--config.allow_config_change=True to continue anyway (the change is recorded)')
  logging.warning('resuming at step %d with changed config (allowed): %s', step, _fmt(risky))
  if record:
    _record(workdir, step, risky)


def _fmt(changes: dict) -> str:
  return ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changes.items())


def _record(workdir: str, step: int, changes: dict) -> None:
  path = os.path.join(workdir, 'config_changes.json')
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f)
  history.append({'step': step, 'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                  'changes': {k: {'saved': old, 'new': new} for k, (old, new) in changes.items()}})
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(history, f, indent=1, default=str)
  os.replace(tmp, path)
