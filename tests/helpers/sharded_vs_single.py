"""Runs one train step of a tiny SE-ResNet on 8 simulated CPU devices and on 1 device with the
same global batch; prints the max differences as JSON. Needs
XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test)."""
import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# As in conftest.py (this process does not load it): halves XLA:CPU compile time of the state's
# init. Both runs below draw the same initial state under it, which is all the comparison needs.
jax.config.update('jax_threefry_partitionable', False)

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from senet_jax.models import create_model  # noqa: E402
from senet_jax.training import optim, steps  # noqa: E402
from senet_jax.training.state import create_sharded_state  # noqa: E402


def run(devices, batch, config):
  mesh = Mesh(np.asarray(devices), ('data',))
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = create_model('se_resnet18', num_classes=10, stage_sizes=(1, 1, 1, 1),
                       stage_planes=(8, 16, 16, 32), stem_width=8)
  schedule = optim.create_schedule(config, 10, 100)
  opt = optim.create_optimizer(config, schedule)
  state, shardings = create_sharded_state(model, opt, jax.random.PRNGKey(0), (1, 32, 32, 3),
                                          replicated)
  step = jax.jit(steps.make_train_step(model, opt, config, schedule),
                 in_shardings=(shardings, data), out_shardings=(shardings, replicated))
  batch = jax.device_put(batch, data)
  for _ in range(2):
    state, metrics = step(state, batch)
  return jax.device_get(state), float(metrics.loss.compute())


def main():
  assert jax.device_count() == 8, jax.devices()
  config = default.get_config()
  config.update(dict(learning_rate=0.5, warmup_epochs=0.0, ema_decay=0.9, batch_size=16,
                     optimizer='sgd'))
  rng = np.random.RandomState(0)
  batch = {'image': rng.randn(16, 32, 32, 3).astype(np.float32),
           'label': rng.randint(0, 10, 16).astype(np.int32),
           'mask': np.ones(16, np.float32)}
  s8, loss8 = run(jax.devices(), batch, config)
  s1, loss1 = run(jax.devices()[:1], batch, config)
  diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(s1.params))
  print(json.dumps({'loss_8': loss8, 'loss_1': loss1, 'params': diff(s8.params, s1.params),
                    'batch_stats': diff(s8.batch_stats, s1.batch_stats),
                    'ema': diff(s8.ema_params, s1.ema_params), 'param_scale': scale}))


if __name__ == '__main__':
  main()
