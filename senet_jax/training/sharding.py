"""The 2-D device mesh (`data` x `fsdp`) and the one rule that shards the train state over it.

The batch is split over every device (each sees a different slice of the global batch, so
BatchNorm statistics, computed by XLA over the sharded batch axis, stay global-batch). Params,
optimizer state, EMA and BatchNorm statistics are sharded over `fsdp` only; XLA inserts the
all-gathers (forward/backward) and reduce-scatters (gradients) itself.

The fsdp axis of size N is laid out in the mesh as N's prime factors (64 -> six axes of 2,
named fsdp_0 .. fsdp_5; a prime N stays one axis named `fsdp`), so that a leaf can be split N
ways over several of its dimensions when no single one is divisible by N. The rule per leaf:
  1. a dimension divisible by N takes the whole axis (the largest such; ties: the later one,
     i.e. output channels of a conv kernel) -- big_vision's `fsdp` rule;
  2. otherwise the dimensions, largest first, each take the factors of N that still divide
     them (e.g. (2544, 106) at N=64: 2544 = 16 * 159 takes 2^4, 106 = 2 * 53 takes 2: a
     32-way split, replicated over the last factor);
  3. a leaf no factor divides (or smaller than `min_size`) is replicated.
Compound-scaled EfficientNet widths (e.g. 2544 = 64 * 39.75) are why step 2 exists: with step 1
alone, fsdp=64 left B8's largest leaves replicated. With `fsdp` = 1 every leaf is replicated:
the plain data-parallel trainer.

Multi-slice (several TPU slices joined by the data-centre network, DCN): the `data` axis is
split as (slice, data within the slice) and every fsdp group lies inside one slice, so the
all-gathers / reduce-scatters of fsdp stay on a slice's ICI and only the gradient all-reduce of
`data` crosses the DCN. `jax.make_mesh` refuses such device sets (jax issue 37769); the mesh is
built with `mesh_utils.create_hybrid_device_mesh`, one granule per slice (devices' `slice_index`); on
devices without slices `mesh_dcn_data` > 1 makes each host (a group of consecutive processes)
a granule instead, for multi-node GPUs. One slice: the same mesh as `jax.make_mesh`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from senet_jax.errors import ConfigError

AXES = ('data', 'fsdp')  # the config's axes (mesh_data, mesh_fsdp); fsdp is factored in the mesh
# Leaves of the TrainState that are never sharded: the step counter and the PRNG key.
UNSHARDED_FIELDS = ('step', 'rng')


class MeshError(ConfigError):
  """Mesh sizes that cannot be laid out on the available devices (a config error: exit 2)."""


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


def fsdp_factors(fsdp: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """(mesh axis names, sizes) of the fsdp axis of size `fsdp`: its prime factors, ascending;
  one axis named 'fsdp' when `fsdp` is 1 or prime."""
  factors, n, p = [], int(fsdp), 2
  while p * p <= n:
    while n % p == 0:
      factors.append(p)
      n //= p
    p += 1
  if n > 1 or not factors:
    factors.append(n)
  names = ('fsdp',) if len(factors) == 1 else tuple(f'fsdp_{i}' for i in range(len(factors)))
  return names, tuple(factors)


def dcn_granules(devices: Sequence[Any], mesh_dcn_data: int = -1) -> tuple[int, str]:
  """(how many DCN granules the data axis spans, 'slice' or 'host').

  mesh_dcn_data -1: one granule per TPU slice (devices' `slice_index`; 1 without it). A value
  > 1 must equal the slice count, or on devices without slices split the processes into that
  many equal groups of consecutive process ids, one per host (Slurm and torchrun number a
  node's processes consecutively): data across hosts, fsdp inside a host's NVLink.
  """
  dcn = int(mesh_dcn_data)
  if dcn == 0 or dcn < -1:
    raise MeshError(f'config.mesh_dcn_data={dcn}: must be -1 (one per TPU slice) or a positive '
                    'number of slices / hosts')
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if dcn == -1 or (slices > 1 and dcn == slices):
    return slices, 'slice'
  if slices > 1:  # fsdp would cross the DCN inside a "granule": never wanted
    raise MeshError(f'config.mesh_dcn_data={dcn}: the devices span {slices} TPU slices; the '
                    f'data axis must span exactly those (-1 or {slices})')
  processes = len({d.process_index for d in devices})
  if processes % dcn:
    counted = f'{processes} processes do' if processes > 1 else '1 process does'
    raise MeshError(f'config.mesh_dcn_data={dcn}: without TPU slices the data axis spans hosts '
                    f'(equal groups of consecutive processes), and {counted} not split into '
                    f'{dcn} groups')
  return dcn, 'host' if dcn > 1 else 'slice'


def _host_groups(devices: list, dcn: int) -> list[list]:
  """The devices split into `dcn` groups of consecutive process ids (one group per host)."""
  order = sorted({d.process_index for d in devices})
  per_group = len(order) // dcn
  group_of = {p: i // per_group for i, p in enumerate(order)}
  return [[d for d in devices if group_of[d.process_index] == g] for g in range(dcn)]


def device_grid(mesh_data: int, mesh_fsdp: int, devices: Sequence[Any],
                mesh_dcn_data: int = -1) -> np.ndarray:
  """The (data, fsdp) array of `devices`: `jax.make_mesh`'s order on one slice; across
  granules (dcn_granules) the data rows are grouped by granule and each row lies in one."""
  devices = list(devices)
  data, fsdp = resolve_mesh_shape(mesh_data, mesh_fsdp, len(devices))
  dcn, what = dcn_granules(devices, mesh_dcn_data)
  # As jax.make_mesh: v5e slices may need a physical axis split to fit the logical shape.
  split = devices[0].device_kind in ('TPU v5 lite', 'TPU v5e')
  if dcn == 1:
    return mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=split)
  if data % dcn:
    raise MeshError(f'config.mesh_fsdp={fsdp} does not fit inside one {what} ({len(devices)} '
                    f'devices on {dcn} {what}s): fsdp must divide the {len(devices) // dcn} '
                    f'devices of each (config.mesh_data={data} must be a multiple of {dcn})')
  try:
    if what == 'slice':
      return mesh_utils.create_hybrid_device_mesh(
          (data // dcn, fsdp), (dcn, 1), devices, allow_split_physical_axes=split)
    return np.concatenate([  # the same hybrid layout, with hosts as the granules
        mesh_utils.create_device_mesh((data // dcn, fsdp), group,
                                      allow_split_physical_axes=split)
        for group in _host_groups(devices, dcn)])
  except ValueError as err:  # e.g. slices or hosts with different device counts
    raise MeshError(f'config.mesh_dcn_data={mesh_dcn_data}: cannot lay out data {data} x fsdp '
                    f'{fsdp} over {dcn} {what}s: {err}') from None


def make_mesh(mesh_data: int, mesh_fsdp: int, devices: Sequence[Any] | None = None,
              mesh_dcn_data: int = -1) -> Mesh:
  """The ('data', fsdp factors...) mesh over `devices` (default: all), laid out by
  `device_grid` (the trailing `fsdp` axis within a host's / slice's fast interconnect);
  factoring fsdp afterwards is a reshape, which keeps that order."""
  devices = list(jax.devices() if devices is None else devices)
  return mesh_from_grid(device_grid(mesh_data, mesh_fsdp, devices, mesh_dcn_data))


def mesh_from_grid(grid: np.ndarray) -> Mesh:
  """The Mesh of a (data, fsdp) device array, the fsdp axis factored (`fsdp_factors`)."""
  names, factors = fsdp_factors(grid.shape[1])
  # Auto axes: XLA's partitioner places the all-gathers / reduce-scatters (explicit-sharding
  # mode would ask every op for its output sharding).
  return Mesh(grid.reshape(grid.shape[0], *factors), ('data',) + names,
              axis_types=(jax.sharding.AxisType.Auto,) * (1 + len(names)))


def describe_mesh(mesh: Mesh) -> str:
  """'data 4 x fsdp 2 (8 devices; 2 slices: data across them, fsdp inside each)'."""
  devices = list(mesh.devices.flat)
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  text = (f'data {mesh.shape["data"]} x fsdp {fsdp_size(mesh)} ({len(devices)} '
          f'device{"s" if len(devices) > 1 else ""}')
  if slices > 1:
    text += f'; {slices} slices: data across them, fsdp inside each'
  return text + ')'


def fsdp_axis_names(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes that together form the fsdp axis."""
  return tuple(n for n in mesh.axis_names if n.startswith('fsdp'))


def fsdp_size(mesh: Mesh) -> int:
  """The size of the fsdp axis (the product of its factors)."""
  return int(np.prod([mesh.shape[n] for n in fsdp_axis_names(mesh)]))


def fsdp_assignment(shape: Sequence[int], fsdp: int, min_size: int = 0) -> list[list[int]]:
  """Per dimension of a leaf, the indices of the fsdp factors (see `fsdp_factors`) it is split
  over, by the rule in the module docstring."""
  _, factors = fsdp_factors(fsdp)
  dims: list[list[int]] = [[] for _ in shape]
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
    return dims
  order = np.argsort(shape, kind='stable')[::-1]  # largest first; ties: the later dimension
  for i in order:  # 1. one dimension takes the whole axis
    if shape[i] % fsdp == 0:
      dims[i] = list(range(len(factors)))
      return dims
  free = list(range(len(factors)))
  for i in order:  # 2. else each dimension takes the factors that still divide it
    rest = int(shape[i])
    for f in list(free):
      if rest % factors[f] == 0:
        rest //= factors[f]
        dims[i].append(f)
        free.remove(f)
  return dims


def fsdp_splits(shape: Sequence[int], fsdp: int, min_size: int = 0) -> tuple[int, ...]:
  """How many ways each dimension of a leaf is split under the rule (1: not split)."""
  _, factors = fsdp_factors(fsdp)
  return tuple(int(np.prod([factors[f] for f in d], dtype=np.int64))
               for d in fsdp_assignment(shape, fsdp, min_size))


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int = 0) -> P:
  """The PartitionSpec of a leaf under the rule, over the mesh axes of `make_mesh`."""
  names, _ = fsdp_factors(fsdp)
  entries = []
  for d in fsdp_assignment(shape, fsdp, min_size):
    entries.append(None if not d else names[d[0]] if len(d) == 1 else tuple(names[f] for f in d))
  return P(*entries)


def state_shardings(abstract_state, mesh: Mesh, min_size: int = 0) -> Any:
  """NamedShardings for every leaf of a TrainState (of ShapeDtypeStructs or arrays) by the rule;
  the step counter and rng key stay replicated."""
  fsdp = fsdp_size(mesh)
  replicated = NamedSharding(mesh, P())

  def leaf(x):
    return NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size=min_size))

  shardings = jax.tree.map(leaf, abstract_state)
  return shardings.replace(**{f: jax.tree.map(lambda _: replicated, getattr(abstract_state, f))
                              for f in UNSHARDED_FIELDS})


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The batch axis split over every device (data and all fsdp factors together, in mesh
  order: the same device order as the unfactored data x fsdp mesh)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def bytes_per_device(tree) -> int:
  """Bytes of `tree` (arrays or ShapeDtypeStructs with shardings) held by one device."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total
