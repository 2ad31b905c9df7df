r"""Top-5 predictions for image files from a checkpoint, with its own preprocessing.

    python -m senet_jax.predict --checkpoint=/ckpt/legacy_seresnet50 cat.jpg dog.png

`--checkpoint` is a training workdir or a converter output; ImageNet class names are printed
when the head has 1000 classes.
"""
from __future__ import annotations

import argparse
import sys

from senet_jax.utils import quiet, xla_flags


def predict(checkpoint: str, paths: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the `top` (class name, probability) pairs."""
  import jax
  import numpy as np
  from senet_jax.analysis import loading
  loaded = loading.load(checkpoint)
  images, _ = loading.preprocess_files(paths, loaded)
  logits = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False))(loaded.variables, images)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  names = loading.class_names(loaded.num_classes)
  return [[(names[i], float(p[i])) for i in np.argsort(-p)[:top]] for p in probs]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--top', type=int, default=5)
  p.add_argument('images', nargs='+')
  args = p.parse_args(argv)
  quiet.tensorflow_banners()
  xla_flags.configure_xla_cpu()
  for path, preds in zip(args.images, predict(args.checkpoint, args.images, args.top)):
    print(path)
    for name, prob in preds:
      print(f'  {100 * prob:6.2f}%  {name}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
