"""EfficientNet-B7 at 600 px with the official TPU code's large-batch LARS optimizer.

From tensorflow/tpu models/official/efficientnet (main.py flags / utils.build_optimizer):
`--optimizer=lars` (tf.contrib LARSOptimizer: momentum 0.9, eta 0.001, skip_list batch norm and
biases), `--lars_weight_decay=1e-5`, `--lars_epsilon=0.0`, `--lr_schedule=poly`, label smoothing
0.1, EMA 0.9999, AutoAugment. The global batch (65536), learning rate, warmup and length are this
config's choices for a pod slice (override them on the command line): the learning rate is per
256 images, so 65536 images give 256 * 0.0625 = 16.0. Differences to the official code: it
adds the L2 loss term (weight_decay 1e-5) on top of LARS's own decay; here LARS/LAMB decay only
inside the update. State sharded over the mesh (mesh_fsdp) and remat make B7@600 fit per device.
"""
from senet_jax.configs import recipes


def get_config():
  """EfficientNet-B7 LARS at batch 65536 (poly decay, power 2)."""
  config = recipes.efficientnet('efficientnet_b7')
  config.update(dict(
      optimizer='lars', momentum=0.9, weight_decay=1e-5, lars_trust_coefficient=1e-3,
      lars_epsilon=0.0, batch_size=65536, learning_rate=0.0625, lr_schedule='poly',
      lr_poly_power=2.0, warmup_epochs=50.0, num_epochs=350.0))
  return config
