"""Every configuration field at its default. Variant files import this and override fields.

Each field -- its default, what it accepts, whether a resumed run may change it, one line of
doc -- is written once, in senet_jax/config/schema.py; print them all with
`python -m senet_jax.config`.

Override any field on the command line: `--config.batch_size=512`. The config is locked, so a
misspelt field (`--config.batchsize=512`) is an error rather than silently ignored. Durations
are in epochs when `num_epochs` > 0, else in steps (`num_train_steps`); the run's length is set
by exactly one of the two.
"""
import ml_collections

from senet_jax.config import schema


def get_config() -> ml_collections.ConfigDict:
  """Defaults: SE-ResNet-50 on ImageNet with the common SGD + cosine recipe."""
  return schema.default_config()
