"""SE-ResNet-50 with LARS at batch 32768, MLPerf ResNet-50 style.

The MLPerf ResNet-50 LARS recipe: LARS (eta 0.001, epsilon 0, momentum 0.9), BatchNorm and
biases excluded from weight decay and the trust ratio, polynomial decay of power 2 to 0 after a
linear warmup, label smoothing 0.1, ~40-70 epochs. The batch-32768 values (absolute peak
LR 29.0 = 0.2265625 per 256, warmup 18 epochs, weight decay 5e-5, 72 epochs) are a starting
point in that style, not copied from a verified MLPerf log; tune warmup/LR for other batch sizes
(LARS peak LRs do not scale linearly with the batch). Needs a pod slice: e.g. 256 x 128 images.
"""
from senet_jax.configs import recipes


def get_config():
  """SE-ResNet-50, LARS, batch 32768, poly(2) decay."""
  config = recipes.se_resnet('se_resnet50')
  config.update(dict(
      optimizer='lars', momentum=0.9, nesterov=False, weight_decay=5e-5,
      lars_trust_coefficient=1e-3, lars_epsilon=0.0, batch_size=32768,
      learning_rate=29.0 * 256 / 32768, lr_schedule='poly', lr_poly_power=2.0,
      warmup_epochs=18.0, num_epochs=72.0, label_smoothing=0.1, dtype='bfloat16'))
  return config
