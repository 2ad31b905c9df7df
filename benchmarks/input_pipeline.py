r"""Host-side input pipeline throughput: ImageNet preprocessing on synthetic JPEGs, side by side.

    python benchmarks/input_pipeline.py --augment=none
    python benchmarks/input_pipeline.py --augment=randaugment --backends=tfdata,grain,timm

Backends: 'tfdata' (pipeline.py), 'grain' (grain_pipeline.py: Grain + libjpeg-turbo/numpy, no
TensorFlow) and 'timm' (timm's PIL `create_transform` + a torch DataLoader, for reference).
Each runs training preprocessing (random resized crop, flip, --augment: --steps batches after 3
warm-up ones) and eval preprocessing (center crop + resize: one pass over the images, the
pipeline's start included); `--workers` worker processes for grain and timm (0: in-process; grain
then reads ahead with threads, tf.data always uses its own thread pool). Each backend runs in
its own process (a finished tf.data iterator's threads slowed the next backend 2x when they
shared one), --rounds times alternating; the medians are printed with the ratios to tf.data.
Rates are images/s and images/s per CPU core available to the process (os.sched_getaffinity).

Images are random-content JPEGs of ImageNet's typical size (500x375, quality 90) served from
memory by a random-access source, so the figure is decode + crop + resize (+ augment) +
batching, the part a data loader can make or break; it excludes disk reads.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
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


def _tfdata(config, source, train: bool, workers: int):
  from senet_jax.data import pipeline, preprocess
  del workers  # tf.data sizes its own thread pool
  if train:
    return pipeline.TrainIterator(config, source)
  prep = preprocess.Preprocessing.from_config(config)
  return pipeline.eval_iterator(source, prep, config.batch_size, 1000)


def _grain(config, source, train: bool, workers: int):
  from senet_jax.data import grain_pipeline, image_ops
  if train:
    return grain_pipeline.TrainIterator(config, source, num_workers=workers)
  prep = image_ops.Preprocessing.from_config(config)
  return grain_pipeline.eval_iterator(source, prep, config.batch_size, 1000,
                                      num_workers=workers)


class _TimmDataset:
  def __init__(self, records, transform):
    self.records, self.transform = records, transform

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    from PIL import Image
    image = Image.open(io.BytesIO(self.records[i]['image'])).convert('RGB')
    return self.transform(image), self.records[i]['label']


def _timm(config, source, train: bool, workers: int):
  import torch
  from timm.data import create_transform
  torch.set_num_threads(1)  # 2 intra-op threads made each transform ~8x slower here (load)
  aa = {'none': None, 'randaugment': f'rand-m{int(config.randaugment_magnitude)}-n2',
        'autoaugment': 'v0'}[config.augment]
  transform = create_transform(config.image_size, is_training=train, auto_augment=aa,
                               interpolation=config.interpolation, crop_pct=224 / 256,
                               hflip=0.5, color_jitter=None)
  loader = torch.utils.data.DataLoader(_TimmDataset(source.records, transform),
                                       batch_size=config.batch_size, shuffle=train,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)
  return _forever(loader) if train else loader


def _forever(loader):
  while True:
    yield from loader


BACKENDS = {'tfdata': _tfdata, 'grain': _grain, 'timm': _timm}


def measure_train(make, steps: int, batch: int) -> tuple[float, float]:
  """(images/s, images per CPU-second of this process) over `steps` batches after 3 warm-up
  batches (graphs, pools, workers). CPU time counts every thread of this process (not worker
  processes): on a shared, loaded machine it is the fairer per-core figure."""
  it = make()
  for _ in range(3):
    next(it)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(it)
  return (steps * batch / (time.perf_counter() - start),
          steps * batch / (time.process_time() - cpu))


def measure_eval(make, num_images: int) -> float:
  """images/s of one pass over the split, the pipeline's start included (what an eval costs)."""
  start = time.perf_counter()
  count = sum(len(batch['label'] if isinstance(batch, dict) else batch[1]) for batch in make())
  assert count >= num_images - num_images % 64, count
  return count / (time.perf_counter() - start)


def run_one(args) -> dict:
  """One backend in this process: {'train', 'per_cpu', 'eval'} images/s."""
  if args.backends == 'timm':  # torch's native import crashes when TensorFlow came first
    import timm.data  # noqa: F401
  from configs import default
  from senet_jax.data import sources
  config = default.get_config()
  config.update(dict(batch_size=args.batch, image_size=args.image_size, augment=args.augment,
                     num_classes=1000))
  source = sources.InMemorySource(synthetic_jpegs(args.num_images))
  make = lambda train: BACKENDS[args.backends](config, source, train, args.workers)  # noqa: E731
  train, per_cpu = measure_train(lambda: make(True), args.steps, args.batch)
  return {'train': train, 'per_cpu': per_cpu, 'eval': measure_eval(lambda: make(False),
                                                                    args.num_images)}


def main(argv=None):
  """Prints the side-by-side table (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--num_images', type=int, default=512)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--augment', default='none', choices=['none', 'autoaugment', 'randaugment'])
  p.add_argument('--backends', default='tfdata,grain,timm')
  p.add_argument('--workers', type=int, default=0)
  p.add_argument('--rounds', type=int, default=3,
                 help='alternating rounds; each backend runs in its own process every round')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print('RESULT ' + json.dumps(run_one(args)), flush=True)
    return

  names = args.backends.split(',')
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  print(f'{args.num_images} JPEGs 500x375 q90, {args.image_size}px, augment={args.augment}, '
        f'batch {args.batch}, {args.steps} batches, workers {args.workers}, {cores} cores, '
        f'{args.rounds} alternating rounds (median), each backend in its own process')
  runs = {name: [] for name in names}
  flags = [f'--{k}={getattr(args, k)}' for k in ('num_images', 'batch', 'steps', 'image_size',
                                                  'augment', 'workers')]
  for _ in range(args.rounds):
    for name in names:
      out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child',
                            f'--backends={name}', *flags], capture_output=True, text=True,
                           check=True).stdout
      runs[name].append(json.loads(out.split('RESULT ', 1)[1]))
  median = {n: {k: float(np.median([r[k] for r in runs[n]])) for k in runs[n][0]} for n in names}
  base = median.get('tfdata')
  print(f'{"backend":8s} {"train img/s":>12s} {"/core":>7s} {"img/CPU-s":>10s} '
        f'{"eval img/s":>11s} {"/core":>7s}' + ('   train / eval vs tfdata' if base else ''))
  for name, m in median.items():
    ratio = (f'   {m["train"] / base["train"]:.2f}x / {m["eval"] / base["eval"]:.2f}x'
             if base else '')
    print(f'{name:8s} {m["train"]:12.1f} {m["train"] / cores:7.1f} {m["per_cpu"]:10.1f} '
          f'{m["eval"]:11.1f} {m["eval"] / cores:7.1f}{ratio}', flush=True)


if __name__ == '__main__':
  main()
