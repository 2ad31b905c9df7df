"""Quickstart: a small SE-ResNet on the offline digits dataset (CPU, a few minutes).

    make quickstart      # = python main.py --config=configs/quickstart.py --workdir=workdir/quickstart
"""
import ml_collections

from senet_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  """SE-ResNet-18-style network, 4 stages of 1 basic block, 32x32 digits, SGD + cosine."""
  config = default.get_config()
  config.model = 'se_resnet18'
  config.model_kwargs = ml_collections.ConfigDict(dict(
      stage_sizes=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128), stem_width=16,
      se_reduction=8.0, se_position='standard', se_gate='sigmoid', se_squeeze='avg',
      layout='v1.5'))
  config.dataset = 'senet_digits'
  config.train_split = 'train'
  config.eval_split = 'test'
  config.num_classes = 10
  config.image_size = 32
  config.eval_crop_fraction = 1.0      # digits fill the frame: no center crop
  config.crop_area_range = (0.6, 1.0)  # gentle random crops keep digits legible
  config.random_flip = False           # a flipped 2 is not a 2
  config.interpolation = 'bilinear'
  config.batch_size = 64
  config.eval_batch_size = 120
  config.num_epochs = 15.0
  config.learning_rate = 0.2           # per 256 images -> 0.05 at batch 64
  config.warmup_epochs = 1.0
  config.weight_decay = 5e-4
  config.label_smoothing = 0.0
  config.ema_decay = 0.99
  config.ema_warmup = True             # short run: do not average in the random init
  config.log_every_steps = 50
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  return config
