"""The checkers the config schema (schema.py) is written with: each takes a value and returns
None when it is valid, else what was expected ('an integer >= 1'), which check_fields prints as
'config.<field>=<value>: expected <that>'.

Light on purpose (no JAX): configs/default.py builds its defaults from the schema, and main.py
checks a mistyped flag in about two seconds, before TensorFlow's import.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Any, Callable

from senet_jax.utils.names import suggest

Checker = Callable[[Any], Any]  # None when valid, else what was expected (a section: see schema)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(lo: int | None = None) -> Checker:
  """An integer (bool refused), >= lo when given."""
  def check(v):
    if not _is_int(v) or (lo is not None and v < lo):
      return 'an integer' + (f' >= {lo}' if lo is not None else '')
    return None
  return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Checker:
  """A finite real number in [lo, hi] (open ends with lo_open / hi_open).

  inf and nan are refused for every float field: none of them means anything useful there
  (num_epochs=inf overflows, learning_rate=inf diverges at the first step).
  """
  def check(v):
    bad = (not _is_num(v) or not math.isfinite(v)
           or (lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if not bad:
      return None
    if hi is None:
      return 'a finite number' + ('' if lo is None else f' {">" if lo_open else ">="} {lo}')
    low = f'{"(" if lo_open else "["}{"-inf" if lo is None else lo}'
    return f'a finite number in {low}, {hi}{")" if hi_open else "]"}'
  return check


def choice(*allowed) -> Checker:
  """One of `allowed`, with a did-you-mean suggestion; the checker keeps them as `.allowed`."""
  def check(v):
    return None if v in allowed else f'one of {list(allowed)}' + suggest(v, allowed)
  check.allowed = allowed
  return check


def boolean(v) -> str | None:
  """True or False (not 1, not 'yes')."""
  return None if isinstance(v, bool) else 'True or False'


def text(allow_empty: bool = True) -> Checker:
  """A string (not empty unless allow_empty)."""
  def check(v):
    if not isinstance(v, str) or (not allow_empty and not v):
      return 'a string' + ('' if allow_empty else ' (not empty)')
    return None
  return check


def optional_text(v) -> str | None:
  """A string or None (a placeholder field such as data_dir)."""
  return None if v is None or isinstance(v, str) else 'a string or None'


def numbers_of(length: int | None, item: Checker, increasing: bool = False) -> Checker:
  """A tuple/list of `length` (any if None) items each passing `item`."""
  def check(v):
    what = f'a sequence of {length or "any number of"} items, each {item(object()) or ""}'
    if not isinstance(v, (tuple, list)) or (length is not None and len(v) != length):
      return what
    if any(item(x) for x in v) or (increasing and list(v) != sorted(v)):
      return what + (' (increasing)' if increasing else '')
    return None
  return check


def pair(item: Checker) -> Checker:
  """(first stage, last stage), each passing `item` (the progressive section's knobs)."""
  def check(v):
    if isinstance(v, (tuple, list)) and len(v) == 2 and not any(item(x) for x in v):
      return None
    return f'(first stage, last stage), each {item(object())}'
  return check


def unset_or(check: Checker, unset='') -> Checker:
  """`unset` (a falsy value meaning 'use the main config's') or a value passing `check`."""
  def inner(v):
    if v == unset or (isinstance(unset, tuple) and isinstance(v, list) and not v):
      return None  # a JSON round trip turns () into []
    problem = check(v)
    return problem and f'{unset!r} (the main config\'s) or {problem}'
  return inner


def noted(check: Checker, note: str) -> Checker:
  """`check` with what a special value means appended to its message ('(0: off)')."""
  def inner(v):
    problem = check(v)
    return problem and f'{problem} ({note})'
  return inner


def described(check: Checker, expected: str) -> Checker:
  """`check` with its message replaced by `expected` (clearer for that field)."""
  return lambda v: expected if check(v) else None


def regex(v) -> str | None:
  """A string that compiles as a regular expression."""
  if not isinstance(v, str):
    return 'a regular expression string'
  try:
    re.compile(v)
  except re.error as err:
    return f'a valid regular expression ({err})'
  return None


def mapping(v) -> str | None:
  """A mapping (dict or ConfigDict)."""
  return None if hasattr(v, 'items') else 'a mapping of keyword arguments'


def crop_fraction(v) -> str | None:
  """-1 (the official res / (res + 32)) or a fraction in (0, 1]."""
  if _is_num(v) and (v == -1 or 0 < v <= 1):
    return None
  return '-1 (res / (res + 32)) or a fraction in (0, 1]'


def crop_range(v) -> str | None:
  """(min, max) area fractions with 0 < min <= max <= 1."""
  if (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_num(x) for x in v)
      and 0 < v[0] <= v[1] <= 1):
    return None
  return 'two fractions (min, max) with 0 < min <= max <= 1'


def mesh_axis(v) -> str | None:
  """A mesh axis size: a positive integer, or -1 (the rest of the devices)."""
  return None if _is_int(v) and (v == -1 or v >= 1) else 'a positive integer, or -1 (the rest)'


def step_range(v) -> str | None:
  """() (off) or (start, end) with 0 <= start < end: config.profile_steps."""
  if isinstance(v, (tuple, list)) and (len(v) == 0 or (
      len(v) == 2 and all(_is_int(x) for x in v) and 0 <= v[0] < v[1])):
    return None
  return '() (off) or (start, end): two integer steps with 0 <= start < end'


POSITIVE_INT, NON_NEG = integer(1), number(0)
FRACTION = number(0, 1, hi_open=True)  # [0, 1)

# Structural model arguments (models/*.py dataclass fields) that build a network without any
# error at 0 (stage_sizes=(0, 0, 0, 0): a network with no blocks, head_channels=0) or fail
# with a bare 'division by zero'. Each is a count or a width: >= 1 (None: the model's default).
MODEL_COUNTS = ('stage_sizes', 'stage_planes', 'stage_widths', 'stem_width', 'stem_widths',
                'stem_channels', 'head_channels', 'hidden_width', 'groups', 'base_width',
                'reduce_first', 'pool_size', 'project_kernel')
MODEL_FRACTIONS = ('dropout_rate', 'drop_path_rate')   # [0, 1): 1 zeroes every activation
MODEL_SCALES = ('width', 'depth', 'scale')             # multipliers: > 0


def model_kwargs(v):
  """config.model_kwargs: a mapping; counts and widths >= 1, rates in [0, 1), scales > 0
  (everything else is checked by building the model in validate.check_model_kwargs).
  Returns (key, expected) for a bad key, so the error names config.model_kwargs.<key>."""
  if not hasattr(v, 'items'):
    return 'a mapping of keyword arguments'
  for key, value in v.items():
    if key in MODEL_COUNTS and value is not None:
      seq = value if isinstance(value, (tuple, list)) else (value,)
      if not seq or any(POSITIVE_INT(x) for x in seq):
        return key, 'an integer >= 1 (a count or a width), or a sequence of them'
    problem = (FRACTION(value) if key in MODEL_FRACTIONS else
               number(0, lo_open=True)(value) if key in MODEL_SCALES and value is not None
               else None)
    if problem:
      return key, problem
  return None
