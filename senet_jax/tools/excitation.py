r"""Excitation analysis (SE paper, Figs. 5-6): mean SE gate per channel, per class, per block;
the library functions and the command line.

    python -m senet_jax.tools.excitation --checkpoint=WORKDIR --blocks=SE_2_1,SE_4_1,SE_5_1 \
        --classes=0,1,2,3 --images_per_class=50 --output=/tmp/excitation

Reads images of the checkpoint's eval split (or --dataset/--split/--data_dir), writes
OUTPUT.png (the figure), OUTPUT.npz and OUTPUT.json (raw means and the per-block mean/std).

`collect` runs a model over batches and averages the recorded gates ('SE_<stage>_<block>')
per class; `plot` draws them in the paper's style (one panel per block, one line per class plus
the mean over all images); `summary` gives each block's mean / std of the gates; `save` writes
the raw numbers as .npz and JSON; `batches_for` reads the eval batches of a split.
"""
from __future__ import annotations

import json
import sys
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.models import collect_excitations
from senet_jax.utils import cli


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


def batches_for(dataset: str, split: str, data_dir: str | None, prep, num_classes: int,
                classes: list[int] | None, per_class: int, batch_size: int = 64
                ) -> Iterator[dict]:
  """Eval batches of `dataset`/`split`, preprocessed by `prep` (a record.Preprocessing),
  until every class of `classes` has `per_class` images (the whole split when None)."""
  from senet_jax.data import pipeline
  source = pipeline.open_source(dataset, split, data_dir)
  seen = {c: 0 for c in classes} if classes else None
  for batch in pipeline.eval_iterator(source, prep, batch_size, num_classes):
    yield batch
    if seen is not None:
      for c in classes:
        seen[c] += int(np.sum((batch['label'] == c) & (batch['mask'] > 0)))
      if all(v >= per_class for v in seen.values()):
        return


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--blocks', default='', help="comma separated 'SE_<stage>_<block>' (all)")
  p.add_argument('--classes', default='', help='comma separated class indices (all)')
  p.add_argument('--images_per_class', type=int, default=50)
  p.add_argument('--dataset', default='', help="TFDS name (default: the checkpoint's)")
  p.add_argument('--split', default='', help="split (default: the checkpoint's eval split)")
  p.add_argument('--data_dir', default='')
  p.add_argument('--output', required=True, help='path prefix of the outputs')
  args = p.parse_args(argv)
  return cli.run(_main, args)


def _main(args) -> int:
  from senet_jax import loading
  loaded = loading.load(args.checkpoint)
  stored = loaded.config or {}  # a converter output records no dataset
  blocks = [b for b in args.blocks.split(',') if b] or None
  classes = [int(c) for c in args.classes.split(',') if c] or None
  batches = batches_for(args.dataset or stored.get('dataset') or 'imagenet2012',
                        args.split or stored.get('eval_split') or 'validation',
                        args.data_dir or stored.get('data_dir'), loaded.preprocessing,
                        loaded.num_classes, classes, args.images_per_class)
  stats = collect(loaded.model, loaded.variables, batches, blocks, classes)
  names = dict(enumerate(loaded.class_names))
  plot(stats, args.output + '.png', names)
  save(stats, args.output)
  for block, s in summary(stats).items():
    print(f'{block}: mean {s["mean"]:.3f} std {s["std"]:.3f}')
  print(f'wrote {args.output}.png, .npz, .json')
  return 0


if __name__ == '__main__':
  sys.exit(main())
