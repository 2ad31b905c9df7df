"""A seconds-long run for subprocess tests: tiny SE-ResNet on digits, 6 steps."""
from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model_kwargs.update(dict(stage_planes=(8, 16, 16, 32), stem_width=8))
  config.update(dict(batch_size=32, eval_batch_size=128, num_epochs=0.0, num_train_steps=6,
                     eval_every_epochs=0.0, checkpoint_every_steps=3, log_every_steps=1,
                     keep_checkpoints=5))
  return config
