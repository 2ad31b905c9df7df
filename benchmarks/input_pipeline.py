r"""Host-side input pipeline throughput: ImageNet training preprocessing on synthetic JPEGs.

    python benchmarks/input_pipeline.py --num_images=512 --batch=64 --steps=30 --augment=none
    python benchmarks/input_pipeline.py --augment=autoaugment

Images are random-content JPEGs of ImageNet's typical size (500x375, quality 90) served from
memory by a random-access source, so the figure is decode + crop + resize (+ augment) +
batching, the part a data loader can make or break; it excludes disk reads.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_jpegs(n: int, width: int = 500, height: int = 375, seed: int = 0):
  """Smooth random images (JPEG-compressible like photos) encoded at quality 90."""
  from PIL import Image
  rng = np.random.RandomState(seed)
  records = []
  for i in range(n):
    low = rng.randint(0, 255, (height // 25 + 1, width // 25 + 1, 3), np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format='JPEG', quality=90)
    records.append({'image': buf.getvalue(), 'label': i % 1000})
  return records


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--num_images', type=int, default=512)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--augment', default='none', choices=['none', 'autoaugment', 'randaugment'])
  args = p.parse_args(argv)

  from configs import default
  from senet_jax.data import pipeline
  config = default.get_config()
  config.update(dict(batch_size=args.batch, image_size=args.image_size, augment=args.augment,
                     num_classes=1000))
  source = pipeline.InMemorySource(synthetic_jpegs(args.num_images))
  it = pipeline.TrainIterator(config, source)
  for _ in range(3):  # warm-up: graph tracing, thread pools
    next(it)
  start = time.perf_counter()
  for _ in range(args.steps):
    next(it)
  elapsed = time.perf_counter() - start
  rate = args.steps * args.batch / elapsed
  print(f'input pipeline: {rate:.1f} images/s ({args.image_size}px, augment={args.augment}, '
        f'batch {args.batch}, {os.cpu_count()} CPUs)')


if __name__ == '__main__':
  main()
