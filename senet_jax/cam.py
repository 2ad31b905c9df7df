r"""CAM / Grad-CAM heatmap overlays for image files from a checkpoint.

    python -m senet_jax.cam --checkpoint=/ckpt/b0 --method=gradcam --output=/tmp/cams a.jpg b.jpg

The class is the model's top-1 prediction unless --class_index is given. Writes
OUTPUT/<image name>.<method>.png.
"""
from __future__ import annotations

import argparse
import os
import sys

from senet_jax.utils import xla_flags


def run(checkpoint: str, paths: list[str], output: str, method: str = 'gradcam',
        class_index: int | None = None, errors: list[str] | None = None) -> list[str]:
  """Writes one overlay per image; returns their paths.

  Files that are missing, not images or too large are skipped with a line appended to
  `errors` (given) or raise loading.ImageError (not given).
  """
  import jax
  import numpy as np
  from senet_jax.analysis import cam, loading
  loaded = loading.load(checkpoint)
  if class_index is not None and not 0 <= class_index < loaded.num_classes:
    raise ValueError(f'--class_index={class_index}: the model has {loaded.num_classes} '
                     f'classes, so it must be in 0..{loaded.num_classes - 1}')
  images, shown, paths, bad = loading.preprocess_images(paths, loaded)
  if errors is None and bad:
    raise loading.ImageError(bad[0])
  if errors is not None:
    errors.extend(bad)
  if images is None:
    return []
  if class_index is None:
    logits = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables,
                                                                         images)
    classes = np.argmax(np.asarray(logits), axis=-1)
  else:
    classes = np.full(len(paths), class_index)
  fn = {'cam': cam.cam, 'gradcam': cam.grad_cam}[method]
  maps = fn(loaded.model, loaded.variables, images, classes)
  os.makedirs(output, exist_ok=True)
  names = [os.path.join(output, f'{os.path.splitext(os.path.basename(p))[0]}.{method}.png')
           for p in paths]
  return cam.save_overlays(shown, maps, names)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--method', choices=['cam', 'gradcam'], default='gradcam')
  p.add_argument('--class_index', type=int, default=None)
  p.add_argument('--output', required=True)
  p.add_argument('images', nargs='+')
  args = p.parse_args(argv)
  xla_flags.configure_xla_cpu()
  from senet_jax.analysis.loading import CheckpointError
  errors = []
  try:
    written = run(args.checkpoint, args.images, args.output, args.method, args.class_index,
                  errors)
  except (CheckpointError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  for path in written:
    print(f'wrote {path}')
  for error in errors:  # the other images were still processed
    print(f'error: {error}', file=sys.stderr)
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
