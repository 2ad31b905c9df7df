"""Excitation analysis (SE paper, Figs. 5-6): mean SE gate per channel, per class, per block.

`collect` runs a model over batches and averages the recorded gates ('SE_<stage>_<block>')
per class; `plot` draws them in the paper's style (one panel per block, one line per class plus
the mean over all images); `summary` gives each block's mean / std of the gates; `save` writes
the raw numbers as .npz and JSON.
"""
from __future__ import annotations

import json
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.models import collect_excitations


def collect(model, variables, batches: Iterable[dict], blocks: list[str] | None = None,
            classes: list[int] | None = None) -> dict[str, dict]:
  """{block: {'class_<c>': mean gate (C,), ..., 'all': mean over all images}}.

  Batches carry 'image', 'label' and optionally 'mask' (padding). Spatial gates (squeeze='none')
  are averaged over positions first.
  """
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates'])[1])
  sums, counts = {}, {}
  for batch in batches:
    gates = collect_excitations(apply(variables, jnp.asarray(batch['image']))['intermediates'])
    labels = np.asarray(batch['label'])
    mask = np.asarray(batch.get('mask', np.ones(len(labels))))
    for name, g in gates.items():
      if blocks and name not in blocks:
        continue
      g = np.asarray(g, np.float64).mean(axis=(1, 2))  # (N, C)
      keys = ['all'] + [f'class_{c}' for c in sorted(set(labels.tolist()))
                        if classes is None or c in classes]
      for key in keys:
        sel = mask > 0 if key == 'all' else (labels == int(key[6:])) & (mask > 0)
        if not sel.any():
          continue
        sums.setdefault(name, {}).setdefault(key, 0.0)
        sums[name][key] = sums[name][key] + g[sel].sum(axis=0)
        counts.setdefault(name, {}).setdefault(key, 0)
        counts[name][key] += int(sel.sum())
  return {name: {k: v / counts[name][k] for k, v in per.items()} for name, per in sums.items()}


def summary(stats: dict[str, dict]) -> dict[str, dict[str, float]]:
  """Per block: mean and std over channels of the all-images mean gate."""
  return {name: {'mean': float(np.mean(per['all'])), 'std': float(np.std(per['all']))}
          for name, per in stats.items() if 'all' in per}


def save(stats: dict[str, dict], prefix: str) -> tuple[str, str]:
  """Writes `prefix`.npz (arrays named '<block>/<key>') and `prefix`.json (with summary)."""
  arrays = {f'{b}/{k}': np.asarray(v) for b, per in stats.items() for k, v in per.items()}
  np.savez(prefix + '.npz', **arrays)
  with open(prefix + '.json', 'w') as f:
    json.dump({'summary': summary(stats),
               'stats': {b: {k: np.asarray(v).tolist() for k, v in per.items()}
                         for b, per in stats.items()}}, f)
  return prefix + '.npz', prefix + '.json'


def plot(stats: dict[str, dict], path: str, class_names: dict[int, str] | None = None) -> str:
  """Paper-style figure: per block, mean excitation vs channel index for each class."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(stats)
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax, name in zip(axes.ravel(), names):
    for key, values in sorted(stats[name].items(), key=lambda kv: kv[0] != 'all'):
      label = 'all' if key == 'all' else (class_names or {}).get(int(key[6:]), key[6:])
      ax.plot(np.arange(len(values)), values, lw=1.6 if key == 'all' else 0.9,
              color='black' if key == 'all' else None, label=str(label))
    ax.set_title(name)
    ax.set_xlabel('channel index')
    ax.set_ylabel('activation')
  for ax in axes.ravel()[len(names):]:
    ax.axis('off')
  axes.ravel()[0].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
