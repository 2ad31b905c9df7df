"""The 2-D device mesh (`data` x `fsdp`) and the one rule that shards the train state over it.

The batch is split over both axes (every device sees a different slice of the global batch, so
BatchNorm statistics, computed by XLA over the sharded batch axis, stay global-batch). Params,
optimizer state, EMA and BatchNorm statistics are sharded over `fsdp` only, by big_vision's
`fsdp` rule: each leaf along its largest dimension that the axis size divides, else replicated.
XLA inserts the all-gathers (forward/backward) and reduce-scatters (gradients) itself.
With `fsdp` = 1 every leaf is replicated: the plain data-parallel trainer.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp')
BATCH_SPEC = P(AXES)  # the batch axis over data and fsdp together
# Leaves of the TrainState that are never sharded: the step counter and the PRNG key.
UNSHARDED_FIELDS = ('step', 'rng')


class MeshError(ValueError):
  """Mesh sizes that cannot be laid out on the available devices."""


def resolve_mesh_shape(mesh_data: int, mesh_fsdp: int, device_count: int) -> tuple[int, int]:
  """(data, fsdp) sizes with one -1 replaced by the rest of the devices; product = devices."""
  sizes = {'mesh_data': int(mesh_data), 'mesh_fsdp': int(mesh_fsdp)}
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise MeshError(f'config.{name}={size}: must be a positive axis size or -1 (the rest of '
                      f'the devices)')
  if list(sizes.values()).count(-1) > 1:
    raise MeshError('config.mesh_data and config.mesh_fsdp are both -1: at most one axis can '
                    'take "the rest of the devices"')
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if device_count % fixed:
    named = ' x '.join(f'config.{k}={v}' for k, v in sizes.items() if v != -1)
    raise MeshError(f'{named} does not divide the device count ({device_count})')
  for name, size in sizes.items():
    if size == -1:
      sizes[name] = device_count // fixed
  if sizes['mesh_data'] * sizes['mesh_fsdp'] != device_count:
    raise MeshError(f'config.mesh_data={sizes["mesh_data"]} x config.mesh_fsdp='
                    f'{sizes["mesh_fsdp"]} = {sizes["mesh_data"] * sizes["mesh_fsdp"]} devices, '
                    f'but there are {device_count} (set one of them to -1)')
  return sizes['mesh_data'], sizes['mesh_fsdp']


def make_mesh(mesh_data: int, mesh_fsdp: int, devices: Sequence[Any] | None = None) -> Mesh:
  """The ('data', 'fsdp') mesh over `devices` (default: all). `jax.make_mesh` orders the devices
  so that the trailing (`fsdp`) axis stays within a host's / slice's fast interconnect."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_data, mesh_fsdp, len(devices))
  # Auto axes: XLA's partitioner places the all-gathers / reduce-scatters (explicit-sharding
  # mode would ask every op for its output sharding).
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def fsdp_spec(shape: Sequence[int], axis_size: int, axis: str = 'fsdp',
              min_size: int = 0) -> P:
  """big_vision's fsdp rule for one leaf: shard the largest dimension divisible by `axis_size`
  (ties: the later dimension, i.e. output channels of a conv kernel); replicate when none is,
  when `axis_size` is 1, or when the leaf has fewer than `min_size` elements."""
  spec = [None] * len(shape)
  if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
    return P(*spec)
  for i in np.argsort(shape, kind='stable')[::-1]:
    if shape[i] % axis_size == 0:
      spec[i] = axis
      break
  return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, min_size: int = 0) -> Any:
  """NamedShardings for every leaf of a TrainState (of ShapeDtypeStructs or arrays) by the rule;
  the step counter and rng key stay replicated."""
  fsdp = mesh.shape['fsdp']
  replicated = NamedSharding(mesh, P())

  def leaf(x):
    return NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size=min_size))

  shardings = jax.tree.map(leaf, abstract_state)
  return shardings.replace(**{f: jax.tree.map(lambda _: replicated, getattr(abstract_state, f))
                              for f in UNSHARDED_FIELDS})


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The batch axis split over every device (data and fsdp together)."""
  return NamedSharding(mesh, BATCH_SPEC)


def bytes_per_device(tree) -> int:
  """Bytes of `tree` (arrays or ShapeDtypeStructs with shardings) held by one device."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total
