r"""Regenerate the README's research-tool pictures from a quick sweep point.

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_reduction_ratio.py:quick \
        --workdir=workdir/sweep_r
    python main.py --config=configs/sweeps/se_reduction_ratio.py:quick --workdir=workdir/fig128 \
        --config.dataset=senet_digits/r64 --config.image_size=128
    python docs/make_figures.py --checkpoint='workdir/sweep_r/se_reduction=16.0' \
        --cam_checkpoint=workdir/fig128

The CAM picture uses the 128 px run: at 32 px the last feature map is 1x1 and a CAM is flat.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--checkpoint', required=True, help='for the excitation figure')
  p.add_argument('--cam_checkpoint', required=True, help='for the Grad-CAM figure')
  p.add_argument('--output_dir', default=os.path.dirname(os.path.abspath(__file__)))
  args = p.parse_args()
  from PIL import Image
  from senet_jax import loading
  from senet_jax.tools import cam
  from senet_jax.tools import excitation as excitation_cli
  from senet_jax.data import pipeline
  excitation_cli.main([f'--checkpoint={args.checkpoint}', '--classes=0,1,2,3,4',
                       '--images_per_class=30',
                       f'--output={os.path.join(args.output_dir, "excitation_quick")}'])
  for suffix in ('.npz', '.json'):  # keep only the picture in docs/
    os.remove(os.path.join(args.output_dir, 'excitation_quick' + suffix))
  loaded = loading.load(args.cam_checkpoint)
  config = loaded.config
  source = pipeline.open_source(config['dataset'], config['eval_split'], config['data_dir'])
  records = source.__getitems__(list(range(8)))
  tiles = []
  tmp = []
  for i, record in enumerate(records):
    path = os.path.join(args.output_dir, f'_digit{i}.png')
    with open(path, 'wb') as f:
      f.write(record['image'])
    tmp.append(path)
  images, shown = loading.preprocess_files(tmp, loaded)
  import jax
  logits = loaded.model.apply(loaded.variables, images, train=False)
  maps = cam.grad_cam(loaded.model, loaded.variables, images, np.argmax(logits, -1))
  for image, heat in zip(shown, np.asarray(maps)):
    pair = np.concatenate([image, cam.overlay(image, heat)], axis=0)
    tiles.append(np.kron(pair, np.ones((2, 2, 1), np.uint8)))
  Image.fromarray(np.concatenate(tiles, axis=1)).save(
      os.path.join(args.output_dir, 'gradcam_quick.png'))
  for path in tmp:
    os.remove(path)
  del jax


if __name__ == '__main__':
  main()
