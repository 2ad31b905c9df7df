"""'Did you mean' suggestions for misspelt names (config fields, models, splits, datasets)."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


def closest(name: Any, candidates: Iterable, n: int = 3) -> list[str]:
  """Up to `n` candidates close to `name`, best first ([] when none is close)."""
  if not isinstance(name, str):
    return []
  candidates = [str(c) for c in candidates]
  close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
  if close:
    return close
  # timm-style names drop underscores: 'seresnet50' -> 'se_resnet50'.
  squashed = {c.replace('_', '').lower(): c for c in candidates}
  return [squashed[k] for k in difflib.get_close_matches(
      name.replace('_', '').lower(), list(squashed), n=n, cutoff=0.8)]


def suggest(name: Any, candidates: Iterable, n: int = 3) -> str:
  """'; did you mean X?' for the closest candidates, or ''."""
  close = closest(name, candidates, n)
  return f'; did you mean {" or ".join(repr(c) for c in close)}?' if close else ''
