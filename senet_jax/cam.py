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
        class_index: int | None = None) -> list[str]:
  """Writes one overlay per image; returns their paths."""
  import jax
  import numpy as np
  from senet_jax.analysis import cam, loading
  loaded = loading.load(checkpoint)
  images, shown = loading.preprocess_files(paths, loaded)
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
  for path in run(args.checkpoint, args.images, args.output, args.method, args.class_index):
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
