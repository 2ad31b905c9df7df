r"""CAM / Grad-CAM heatmaps for image files from a checkpoint.

    python -m senet_jax.cam --checkpoint=/ckpt/b0 --method=gradcam --output=/tmp/cams a.jpg b.jpg

The class is the model's top-1 prediction unless --class_index is given. Writes, per image,
OUTPUT/<image name>.<method>.png (the overlay, at the image's own resolution: the eval centre
crop before resizing) and OUTPUT/<image name>.<method>.figure.png (input and overlay side by
side with the class, its probability and a colour bar). A model whose last feature map is 1x1
at its resolution (the quickstart: 32 px, stride 32) is refused with a suggested resolution;
--resolution runs the checkpoint at another input size.
"""
from __future__ import annotations

import argparse
import os
import sys

from senet_jax.utils import quiet, xla_flags


def run(checkpoint: str, paths: list[str], output: str, method: str = 'gradcam',
        class_index: int | None = None, resolution: int | None = None,
        errors: list[str] | None = None) -> list[str]:
  """Writes an overlay and a figure per image; returns the overlays' paths.

  Raises cam.FeatureMapTooSmall when the last feature map is below 2x2 at the resolution.
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
  size = resolution or loaded.image_size
  note = cam.check_feature_map(cam.feature_map_size(loaded.model, loaded.variables, size), size)
  if note:
    print(f'note: {note}', file=sys.stderr)
  images, crops, paths, bad = cam.load_images(paths, size, loaded.interpolation,
                                              loaded.eval_crop_fraction, loaded.mean_rgb,
                                              loaded.std_rgb)
  if errors is None and bad:
    raise loading.ImageError(bad[0])
  if errors is not None:
    errors.extend(bad)
  if images is None:
    return []
  logits = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  classes = np.argmax(probs, -1) if class_index is None else np.full(len(paths), class_index)
  fn = {'cam': cam.cam, 'gradcam': cam.grad_cam}[method]
  maps = np.asarray(fn(loaded.model, loaded.variables, images, classes))
  names = loading.class_names(loaded.num_classes)
  os.makedirs(output, exist_ok=True)
  written = []
  for path, crop, heat, c, p in zip(paths, crops, maps, classes, probs):
    stem = os.path.join(output, f'{os.path.splitext(os.path.basename(path))[0]}.{method}')
    written += cam.save_overlays([crop], [heat], [stem + '.png'])
    title = (f'{"Grad-CAM" if method == "gradcam" else "CAM"} of {names[c]} '
             f'(p = {p[c]:.3f}{", top-1" if c == np.argmax(p) else ""}) at {size} px')
    cam.save_figure(crop, heat, title, stem + '.figure.png')
  return written


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--method', choices=['cam', 'gradcam'], default='gradcam')
  p.add_argument('--class_index', type=int, default=None)
  p.add_argument('--resolution', type=int, default=None,
                 help="input size for the model (default: the checkpoint's)")
  p.add_argument('--output', required=True)
  p.add_argument('images', nargs='+')
  args = p.parse_args(argv)
  quiet.tensorflow_banners()
  xla_flags.configure_xla_cpu()
  from senet_jax.analysis import cam
  from senet_jax.analysis.loading import CheckpointError
  errors = []
  try:
    written = run(args.checkpoint, args.images, args.output, args.method, args.class_index,
                  args.resolution, errors)
  except (CheckpointError, ValueError, cam.FeatureMapTooSmall) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  for path in written:
    print(f'wrote {path} (and {os.path.basename(path)[:-4]}.figure.png)')
  for error in errors:  # the other images were still processed
    print(f'error: {error}', file=sys.stderr)
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
