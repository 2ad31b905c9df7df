"""Quickstart at 128 px, for class activation maps (a few minutes on a 2-core CPU).

The quickstart's 32 px input leaves a 1x1 last feature map (the network downsamples by 32), on
which CAM and Grad-CAM are flat; at 128 px the map is 4x4.

    python main.py --config=configs/quickstart_cam.py --workdir=workdir/quickstart_cam
    python -m senet_jax.data.digits digit.png   # a test digit as a PNG
    python -m senet_jax.tools.cam --checkpoint=workdir/quickstart_cam --output=/tmp/cams digit.png
"""
import ml_collections

from senet_jax.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  """The quickstart network on the 64 px digits upscaled to 128 px, 6 epochs."""
  config = quickstart.get_config()
  config.dataset = 'senet_digits/r64'  # stored at 64 px, resized to image_size
  config.image_size = 128
  config.num_epochs = 6.0
  config.eval_every_epochs = 0.0       # evaluate at the end only
  return config
