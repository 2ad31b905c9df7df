r"""Top-5 predictions for image files from a checkpoint, with its own preprocessing.

    python -m senet_jax.tools.predict --checkpoint=/ckpt/legacy_seresnet50 cat.jpg dog.png

`--checkpoint` is a training workdir or a converter output; ImageNet class names are printed
when the head has 1000 classes.
"""
from __future__ import annotations

import sys

from senet_jax.utils import cli


def predict(checkpoint: str, paths: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the `top` (class name, probability) pairs (ImageError for a bad file)."""
  results, errors = predict_each(checkpoint, paths, top)
  if errors:
    from senet_jax.loading import ImageError
    raise ImageError(errors[0])
  return [results[p] for p in paths]


def predict_each(checkpoint: str, paths: list[str], top: int = 5, max_pixels: int | None = None
                 ) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
  """({path: top pairs} for the usable images, one error line per file that is not)."""
  import jax
  import numpy as np
  from senet_jax import loading
  loaded = loading.load(checkpoint)
  images, _, kept, errors = loading.preprocess_images(paths, loaded,
                                                      max_pixels or loading.MAX_PIXELS)
  if images is None:
    return {}, errors
  logits = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables, images)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  names = loaded.class_names
  return {path: [(names[i], float(p[i])) for i in np.argsort(-p)[:top]]
          for path, p in zip(kept, probs)}, errors


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--top', type=int, default=5)
  p.add_argument('--max_pixels', type=int, default=None,
                 help='refuse images whose header claims more pixels (default 40 million)')
  p.add_argument('images', nargs='+')
  args = p.parse_args(argv)
  return cli.run(_main, args)


def _main(args) -> int:
  results, errors = predict_each(args.checkpoint, args.images, args.top, args.max_pixels)
  for path, preds in results.items():
    print(path)
    for name, prob in preds:
      print(f'  {100 * prob:6.2f}%  {name}')
  return cli.report_skipped(errors)  # the other images were still predicted


if __name__ == '__main__':
  sys.exit(main())
