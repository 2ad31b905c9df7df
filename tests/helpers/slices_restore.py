"""A train state saved on a mesh over 2 simulated TPU slices restores onto 4 slices and onto
one slice, through the trainer's Checkpointer and fsdp rule. Needs
XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test); prints JSON.

The 8 CPU devices are wrapped in objects that add a `slice_index` (2 or 4 equal slices), so
the mesh comes from the real multi-slice path (sharding.device_grid -> create_hybrid_device_mesh);
the Mesh itself is then built over the wrapped CPU devices.
"""
import json
import sys

import jax
import numpy as np

jax.config.update('jax_threefry_partitionable', False)  # as conftest.py: faster init compile

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from senet_jax.models import create_model  # noqa: E402
from senet_jax.training import checkpoint as ckpt_lib  # noqa: E402
from senet_jax.training import optim, sharding  # noqa: E402
from senet_jax.training.state import abstract_state, create_sharded_state  # noqa: E402

IMAGE = (1, 32, 32, 3)


class SliceDevice:
  """A real device seen as part of TPU slice `slice_index`."""

  def __init__(self, device, slice_index):
    self.device, self.slice_index = device, slice_index

  def __getattr__(self, name):
    return getattr(self.device, name)


def mesh_on(slices: int, fsdp: int):
  devices = jax.devices()
  per = len(devices) // slices
  wrapped = [SliceDevice(d, i // per) for i, d in enumerate(devices)]
  grid = sharding.device_grid(-1, fsdp, wrapped)
  slice_of_row = [{d.slice_index for d in row} for row in grid]
  assert all(len(s) == 1 for s in slice_of_row), slice_of_row  # fsdp groups inside a slice
  real = np.vectorize(lambda d: d.device, otypes=[object])(grid)
  return sharding.mesh_from_grid(real), [s.pop() for s in slice_of_row]


def main(directory):
  assert jax.device_count() == 8, jax.devices()
  config = default.get_config()
  model = create_model('se_resnet18', num_classes=10, stage_sizes=(1, 1, 1, 1),
                       stage_planes=(8, 16, 16, 32), stem_width=8)
  opt = optim.create_optimizer(config, optim.create_schedule(config, 10, 100))
  mesh2, rows2 = mesh_on(2, 2)                  # data 4 = 2 slices x 2, fsdp 2
  state, _ = create_sharded_state(model, opt, jax.random.PRNGKey(3), IMAGE,
                                  lambda s: sharding.state_shardings(s, mesh2))
  saved = jax.device_get(state)
  writer = ckpt_lib.Checkpointer(directory)
  writer.save(7, state, {'model': 'se_resnet18', 'step': 7}, force=True)
  writer.close()
  out = {'rows_slices_2': rows2}
  for name, (slices, fsdp) in {'4_slices_fsdp2': (4, 2), '1_slice_fsdp8': (1, 8)}.items():
    mesh, rows = mesh_on(slices, fsdp)
    target = sharding.state_shardings(jax.eval_shape(lambda: state), mesh)
    restored, _, step = ckpt_lib.Checkpointer(directory).restore_latest_usable(
        abstract_state(model, opt, IMAGE, target), 'se_resnet18')
    leaves = jax.tree.leaves(restored)
    out[name] = {
        'step': step, 'rows_slices': rows,
        'max_diff': max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
                        for a, b in zip(jax.tree.leaves(jax.device_get(restored)),
                                        jax.tree.leaves(saved))),
        'shardings_as_asked': all(x.sharding == t for x, t in zip(leaves,
                                                                   jax.tree.leaves(target))),
        'sharded_leaves': sum(not x.sharding.is_fully_replicated for x in leaves),
    }
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1])
