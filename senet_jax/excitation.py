r"""Excitation analysis from a checkpoint (SE paper Figs. 5-6): per-class mean SE gates.

    python -m senet_jax.excitation --checkpoint=WORKDIR --blocks=SE_2_1,SE_4_1,SE_5_1 \
        --classes=0,1,2,3 --images_per_class=50 --output=/tmp/excitation

Reads images of the checkpoint's eval split (or --dataset/--split/--data_dir), writes
OUTPUT.png (the figure), OUTPUT.npz and OUTPUT.json (raw means and the per-block mean/std).
"""
from __future__ import annotations

import argparse
import sys

from senet_jax.utils import quiet


def batches_for(loaded, dataset, split, data_dir, classes, per_class, batch_size=64):
  """Eval batches of the split until every chosen class has `per_class` images.

  The split and the preprocessing come from the checkpoint (`loaded`) unless `dataset`,
  `split` or `data_dir` are given; only the values the eval pipeline reads are passed to it.
  """
  import ml_collections
  import numpy as np
  from senet_jax.data import pipeline
  stored = loaded.config or {}
  config = ml_collections.ConfigDict(dict(
      dataset=dataset or stored.get('dataset') or 'imagenet2012',
      eval_split=split or stored.get('eval_split') or 'validation',
      data_dir=data_dir or stored.get('data_dir'), image_size=loaded.image_size,
      eval_crop_fraction=loaded.eval_crop_fraction, interpolation=loaded.interpolation,
      mean_rgb=tuple(loaded.mean_rgb), std_rgb=tuple(loaded.std_rgb), input_dtype='float32',
      eval_batch_size=batch_size, num_classes=loaded.num_classes))
  source = pipeline.open_source(config.dataset, config.eval_split, config.data_dir)
  seen = {c: 0 for c in classes} if classes else None
  for batch in pipeline.eval_iterator(config, source):
    yield batch
    if seen is not None:
      for c in classes:
        seen[c] += int(np.sum((batch['label'] == c) & (batch['mask'] > 0)))
      if all(v >= per_class for v in seen.values()):
        return


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--blocks', default='', help="comma separated 'SE_<stage>_<block>' (all)")
  p.add_argument('--classes', default='', help='comma separated class indices (all)')
  p.add_argument('--images_per_class', type=int, default=50)
  p.add_argument('--dataset', default='')
  p.add_argument('--split', default='')
  p.add_argument('--data_dir', default='')
  p.add_argument('--output', required=True, help='path prefix of the outputs')
  args = p.parse_args(argv)
  quiet.tensorflow_banners()
  from senet_jax.analysis import excitation, loading
  try:
    loaded = loading.load(args.checkpoint)
  except loading.CheckpointError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  blocks = [b for b in args.blocks.split(',') if b] or None
  classes = [int(c) for c in args.classes.split(',') if c] or None
  stats = excitation.collect(loaded.model, loaded.variables,
                             batches_for(loaded, args.dataset, args.split, args.data_dir,
                                         classes, args.images_per_class), blocks, classes)
  names = dict(enumerate(loading.class_names(loaded.num_classes)))
  excitation.plot(stats, args.output + '.png', names)
  excitation.save(stats, args.output)
  for block, s in excitation.summary(stats).items():
    print(f'{block}: mean {s["mean"]:.3f} std {s["std"]:.3f}')
  print(f'wrote {args.output}.png, .npz, .json')
  return 0


if __name__ == '__main__':
  sys.exit(main())
