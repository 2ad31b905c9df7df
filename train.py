"""The trainer is in the package: senet_jax/training/trainer.py (`train_and_evaluate`,
`evaluate_only`, ...), so that `senet-train` and `senet-sweep` work after `pip install`.

This file keeps `import train` working in the checkout (tests, notebooks, `senet-sweep
--trainer=train:train_and_evaluate`): the name `train` IS that module (sys.modules), so
`train.X` and monkeypatching `train.X` act on the trainer itself. Edit the trainer there.
"""
import sys

from senet_jax.training import trainer

sys.modules[__name__] = trainer
