r"""Class activation maps, CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017): the
library functions and the command line.

    python -m senet_jax.tools.cam --checkpoint=/ckpt/b0 --method=gradcam --output=/tmp/cams \
        a.jpg b.jpg

The class is the model's top-1 prediction unless --class_index is given. Writes, per image,
OUTPUT/<image name>.<method>.png (the overlay, at the image's own resolution: the eval centre
crop before resizing) and OUTPUT/<image name>.<method>.figure.png (input and overlay side by
side with the class, its probability and a colour bar). A model whose last feature map is 1x1
at its resolution (the quickstart: 32 px, stride 32) is refused with a suggested resolution;
--resolution runs the checkpoint at another input size.

Both maps use the last feature map A (the model's 'features' tap, right before global pooling):
- CAM_c = sum_k w[k, c] A_k with w the classifier kernel (exact for GAP + linear heads, which
  every registered model has);
- Grad-CAM_c = relu(sum_k alpha_k A_k), alpha_k = mean over positions of d logit_c / d A_k.
Maps are upsampled (bilinear) to the image size and scaled to [0, 1]. For such heads Grad-CAM
is ReLU(CAM) up to a positive factor (alpha_k = w[k, c] / HW): the two differ where CAM is
negative (evidence against the class), which Grad-CAM clips to zero. A last feature map of 1x1
(e.g. a stride-32 network at 32 px) has no spatial extent: `check_feature_map` refuses it.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.utils import cli

FEATURES = 'features'


def _apply_with_tap(model, variables, images, delta=None):
  """Logits and the feature map; `delta` is added to the features (for their gradient)."""
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name == FEATURES and (
        len(context.module.path) == 1):
      if delta is not None:
        out = out + delta
      captured['features'] = out
    return out

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, images, train=False)
  return logits, captured['features']


class FeatureMapTooSmall(ValueError):
  """The last feature map is too small for a class activation map."""


def feature_map_size(model, variables, image_size: int) -> tuple[int, int]:
  """(height, width) of the last feature map at `image_size` (shapes only, nothing computed)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  _, feats = jax.eval_shape(lambda v, x: _apply_with_tap(model, v, x), variables, images)
  return int(feats.shape[1]), int(feats.shape[2])


def check_feature_map(size: tuple[int, int], image_size: int, minimum: int = 2) -> str | None:
  """Raises FeatureMapTooSmall below `minimum` cells a side; returns a warning when coarse."""
  stride = max(image_size // max(min(size), 1), 1)
  suggested = stride * 4  # a 4x4 map: the coarsest that localises anything
  where = f'the last feature map is {size[0]}x{size[1]} at {image_size} px (stride {stride})'
  if min(size) < minimum:
    raise FeatureMapTooSmall(
        f'{where}: a class activation map needs at least {minimum}x{minimum}. Use a model '
        f'trained at >= {suggested} px (configs/quickstart_cam.py for the quickstart), or '
        f'--resolution={suggested} to run this one on upsampled inputs (its predictions may '
        'change).')
  if min(size) < 4:
    return f'{where}: the map is coarse; >= {suggested} px gives 4x4'
  return None


def head_kernel(variables) -> jax.Array:
  """The (features, classes) kernel of the classifier ('fc' or 'classifier')."""
  params = variables['params']
  return params['fc' if 'fc' in params else 'classifier']['kernel']


def _normalise(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  maps = jax.image.resize(maps, (maps.shape[0], *size), 'bilinear')
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  return (maps - lo) / jnp.maximum(hi - lo, 1e-8)


def cam(model, variables, images, classes) -> jax.Array:
  """CAM maps (N, H, W) in [0, 1] for one class per image."""
  _, feats = _apply_with_tap(model, variables, images)
  w = head_kernel(variables)[:, jnp.asarray(classes)]                # (K, N)
  maps = jnp.einsum('nhwk,kn->nhw', feats.astype(jnp.float32), w)
  return _normalise(maps, images.shape[1:3])


def grad_cam(model, variables, images, classes) -> jax.Array:
  """Grad-CAM maps (N, H, W) in [0, 1] for one class per image."""
  _, feats = _apply_with_tap(model, variables, images)
  classes = jnp.asarray(classes)

  def score(delta):
    logits, _ = _apply_with_tap(model, variables, images, delta)
    return jnp.sum(jnp.take_along_axis(logits, classes[:, None], axis=1))

  grads = jax.grad(score)(jnp.zeros_like(feats))
  alpha = grads.mean(axis=(1, 2), keepdims=True)
  maps = jax.nn.relu(jnp.sum(alpha * feats, axis=-1))
  return _normalise(maps, images.shape[1:3])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8 RGB image with a jet-coloured heatmap blended on top (heatmap resized to the image)."""
  import matplotlib
  heatmap = resize_map(heatmap, np.shape(image)[:2])
  colours = matplotlib.colormaps['jet'](np.asarray(heatmap))[..., :3]
  image = np.asarray(image, np.float32)
  if image.max() > 1.0:
    image = image / 255.0
  return (255 * np.clip((1 - alpha) * image + alpha * colours, 0, 1)).astype(np.uint8)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A [0, 1] map resized (bilinear) to `size` = (height, width)."""
  heatmap = np.asarray(heatmap, np.float32)
  if heatmap.shape == tuple(size):
    return heatmap
  return np.clip(np.asarray(jax.image.resize(heatmap, tuple(size), 'bilinear')), 0.0, 1.0)


def save_overlays(images_uint8, maps, paths: list[str]) -> list[str]:
  """Writes one PNG overlay per image, at the image's own resolution."""
  from PIL import Image
  for image, heatmap, path in zip(images_uint8, maps, paths):
    Image.fromarray(overlay(image, heatmap)).save(path)
  return paths


def save_figure(image: np.ndarray, heatmap: np.ndarray, title: str, path: str) -> str:
  """Input beside the overlay with a colour bar and `title` (class, score), as a PNG."""
  from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
  heatmap = resize_map(heatmap, np.shape(image)[:2])
  fig = Figure(figsize=(6.4, 3.3), dpi=100, layout='constrained')
  left, right = fig.subplots(1, 2)
  # 'nearest' shows the input's own pixels however small it is.
  left.imshow(image, interpolation='nearest')
  left.set_title(f'input ({image.shape[1]}x{image.shape[0]} px)', fontsize=9)
  right.imshow(image, interpolation='nearest')
  shown = right.imshow(heatmap, cmap='jet', alpha=0.5, vmin=0.0, vmax=1.0,
                       interpolation='nearest')
  right.set_title('class activation', fontsize=9)
  fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04, label='relative activation')
  for axis in (left, right):
    axis.set_axis_off()
  fig.suptitle(title, fontsize=10)
  fig.savefig(path)
  return path


def load_images(paths: list[str], prep) -> tuple[np.ndarray | None, list[np.ndarray],
                                                 list[str], list[str]]:
  """(normalised batch by `prep` (a record.Preprocessing), uint8 centre crops, paths kept,
  errors).

  The crops are the regions the model sees (the eval centre crop), before resizing, so maps
  are drawn at the input's resolution rather than the model's. A file that is missing, not an
  image or over the pixel limit (checked from its header, before decoding) is skipped with one
  error line naming it; batch is None when no file could be used.
  """
  from senet_jax.data import image_ops
  from senet_jax.loading import ImageError, decode_image_file, eval_transform
  batch, crops, kept, errors = [], [], [], []
  for path in paths:
    try:
      image = decode_image_file(path)
    except ImageError as err:
      errors.append(str(err))
      continue
    top, left, size = image_ops.center_crop_window(image.shape[0], image.shape[1],
                                                   prep.image_size, prep.eval_crop_fraction)
    crops.append(image[top:top + size, left:left + size])
    batch.append(image_ops.normalize(eval_transform(image, prep), prep.mean_rgb, prep.std_rgb))
    kept.append(path)
  return (np.stack(batch) if batch else None), crops, kept, errors


def run(checkpoint: str, paths: list[str], output: str, method: str = 'gradcam',
        class_index: int | None = None, resolution: int | None = None,
        errors: list[str] | None = None) -> list[str]:
  """Writes an overlay and a figure per image; returns the overlays' paths.

  Raises FeatureMapTooSmall when the last feature map is below 2x2 at the resolution.
  Files that are missing, not images or too large are skipped with a line appended to
  `errors` (given) or raise loading.ImageError (not given).
  """
  from senet_jax import loading
  loaded = loading.load(checkpoint)
  if class_index is not None and not 0 <= class_index < loaded.num_classes:
    raise ValueError(f'--class_index={class_index}: the model has {loaded.num_classes} '
                     f'classes, so it must be in 0..{loaded.num_classes - 1}')
  size = resolution or loaded.image_size
  note = check_feature_map(feature_map_size(loaded.model, loaded.variables, size), size)
  if note:
    print(f'note: {note}', file=sys.stderr)
  images, crops, paths, bad = load_images(
      paths, dataclasses.replace(loaded.preprocessing, image_size=size))
  if errors is None and bad:
    raise loading.ImageError(bad[0])
  if errors is not None:
    errors.extend(bad)
  if images is None:
    return []
  logits = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  classes = np.argmax(probs, -1) if class_index is None else np.full(len(paths), class_index)
  fn = {'cam': cam, 'gradcam': grad_cam}[method]
  maps = np.asarray(fn(loaded.model, loaded.variables, images, classes))
  names = loaded.class_names
  os.makedirs(output, exist_ok=True)
  written = []
  for path, crop, heat, c, p in zip(paths, crops, maps, classes, probs):
    stem = os.path.join(output, f'{os.path.splitext(os.path.basename(path))[0]}.{method}')
    written += save_overlays([crop], [heat], [stem + '.png'])
    title = (f'{"Grad-CAM" if method == "gradcam" else "CAM"} of {names[c]} '
             f'(p = {p[c]:.3f}{", top-1" if c == np.argmax(p) else ""}) at {size} px')
    save_figure(crop, heat, title, stem + '.figure.png')
  return written


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--method', choices=['cam', 'gradcam'], default='gradcam')
  p.add_argument('--class_index', type=int, default=None)
  p.add_argument('--resolution', type=int, default=None,
                 help="input size for the model (default: the checkpoint's)")
  p.add_argument('--output', required=True)
  p.add_argument('images', nargs='+')
  args = p.parse_args(argv)
  return cli.run(_main, args)


def _main(args) -> int:
  errors = []  # bad images: the others are still processed
  written = run(args.checkpoint, args.images, args.output, args.method, args.class_index,
                args.resolution, errors)
  for path in written:
    print(f'wrote {path} (and {os.path.basename(path)[:-4]}.figure.png)')
  return cli.report_skipped(errors)


if __name__ == '__main__':
  sys.exit(main())
