"""Two train steps of a tiny SE-ResNet on 8 simulated CPU devices with the mesh data=8 (fsdp=1),
fsdp=8 and data=2 x fsdp=4, same global batch; prints JSON with the max differences to data=8
and every state leaf's shape and how many ways each dimension is split under fsdp=8. Needs
XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test). argv[1]: optimizer,
argv[2]: comma-separated meshes to compare (default: both)."""
import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from senet_jax.models import create_model  # noqa: E402
from senet_jax.training import optim, sharding, steps  # noqa: E402
from senet_jax.training.state import create_sharded_state  # noqa: E402


def run(mesh_shape, batch, config):
  mesh = sharding.make_mesh(*mesh_shape)
  model = create_model('se_resnet18', num_classes=10, stage_sizes=(1, 1, 1, 1),
                       stage_planes=(8, 16, 16, 32), stem_width=8)
  schedule = optim.create_schedule(config, 10, 100)
  opt = optim.create_optimizer(config, schedule)
  state, shardings = create_sharded_state(model, opt, jax.random.PRNGKey(0), (1, 32, 32, 3),
                                          lambda s: sharding.state_shardings(s, mesh))
  step = jax.jit(steps.make_train_step(model, opt, config, schedule),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  for _ in range(2):
    state, metrics = step(state, batch)
  specs = {jax.tree_util.keystr(path): [list(x.shape), [d // s for d, s in zip(
      x.shape, x.sharding.shard_shape(x.shape))]]
           for path, x in jax.tree_util.tree_leaves_with_path(state)}
  return jax.device_get(state), float(metrics.loss.compute()), specs


def main():
  assert jax.device_count() == 8, jax.devices()
  config = default.get_config()
  config.update(dict(learning_rate=0.5, warmup_epochs=0.0, ema_decay=0.9, batch_size=16,
                     optimizer=sys.argv[1] if len(sys.argv) > 1 else 'sgd'))
  rng = np.random.RandomState(0)
  batch = {'image': rng.randn(16, 32, 32, 3).astype(np.float32),
           'label': rng.randint(0, 10, 16).astype(np.int32),
           'mask': np.ones(16, np.float32)}
  ref, loss_ref, _ = run((8, 1), batch, config)
  diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  result = {'loss_data8': loss_ref,
            'param_scale': max(float(np.max(np.abs(x))) for x in jax.tree.leaves(ref.params))}
  meshes = {'fsdp8': (1, 8), 'data2_fsdp4': (2, 4)}
  names = sys.argv[2].split(',') if len(sys.argv) > 2 else list(meshes)
  for name, shape in ((n, meshes[n]) for n in names):
    state, loss, specs = run(shape, batch, config)
    result[name] = {'loss': loss, 'params': diff(state.params, ref.params),
                    'opt_state': diff(state.opt_state, ref.opt_state),
                    'batch_stats': diff(state.batch_stats, ref.batch_stats),
                    'ema': diff(state.ema_params, ref.ema_params), 'specs': specs}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
