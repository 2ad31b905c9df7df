"""Checksums of checkpoints and finiteness of a train state.

Two layers, both verified on restore; a mismatch makes the checkpoint "damaged" (set aside,
fall back to the previous one). A state holding a NaN/inf is never written and never restored.

1. Values: the checkpoint's JSON record carries a 64-bit digest of every saved array and of
   itself, computed on the devices before the write and saved atomically with the checkpoint.
2. Files: once orbax has committed a step, `checksums.json` in the step directory lists the
   CRC-32C of every file in it (written atomically after the commit; hardware CRC through
   `google-crc32c`, ~5 GB/s here against sha256's 0.6, the checksum cloud storage uses for the
   same purpose). This covers the bytes
   orbax writes but never reads back (superseded per-process indexes, commit markers), so any
   flipped byte in a step directory is detected. A step killed between its commit and this
   file has only layer 1 -- still every value that is restored.

Why a digest of the values rather than of the files: it verifies exactly what is restored,
whatever orbax's storage layout (OCDBT, zarr chunks, compression), and it is computed where
the arrays already are. The digest is a sum over elements of a hash of (bits, flat index); sums
of integers modulo 2**32 do not depend on the order of summation, so the digest is the same for
any sharding or device count (an elastic resume onto fewer devices verifies as well). For each
index the hash is a bijection of the element's bits, so changing any one element always
changes the sum; several changes cancel with probability ~2**-64 (two independent lanes).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = 'mulxor-sum-v1'
FILES_NAME = 'checksums.json'
# Odd multipliers (murmur3's): multiplication by an odd number is a bijection modulo 2**32.
_SALT, _MUL_A, _MUL_B = np.uint32(0x9E3779B9), np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The element bits of `x` as uint32 (every dtype a train state holds)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  raise TypeError(f'no checksum for dtype {x.dtype}')  # 64-bit arrays need jax_enable_x64


def _flat_index(shape) -> jax.Array:
  """Row-major element index (uint32, wrapping above 2**32 elements) built from iotas, so that
  XLA shards it like the array instead of materialising one replicated arange."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride % 2**32)
    stride *= shape[dim]
  return index


def _leaf_report(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(uint32[2] digest, bool finite) of one array.

  With v an element's bits, i its flat index and s = i * SALT (all modulo 2**32):
  lane a sums (v ^ s) * MUL_A, lane b sums t ^ (t >> 16) for t = v * MUL_B + s. Each term is a
  bijection of v for a fixed i, so changing one element always changes both sums; a few cheap
  integer operations per element keep the pass memory-bound and quick to compile.
  """
  bits = _as_uint32(x)
  salt = _flat_index(bits.shape) * _SALT
  lane_a = jnp.sum((bits ^ salt) * _MUL_A, dtype=jnp.uint32)
  t = bits * _MUL_B + salt
  lane_b = jnp.sum(t ^ (t >> 16), dtype=jnp.uint32)
  finite = (jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
            else jnp.array(True))
  return jnp.stack([lane_a, lane_b]), finite


def _tree_report_fn(leaves: list) -> tuple[jax.Array, jax.Array]:
  reports = [_leaf_report(x) for x in leaves]
  return (jnp.stack([d for d, _ in reports]) if reports else jnp.zeros((0, 2), jnp.uint32),
          jnp.stack([f for _, f in reports]) if reports else jnp.zeros((0,), bool))


@functools.lru_cache(maxsize=None)
def _jitted_report(replicated):
  """The report's jit; with several processes its outputs are replicated on the state's mesh,
  so that every process can read them (a small array each)."""
  return jax.jit(_tree_report_fn, out_shardings=replicated)


def _tree_report(leaves: list) -> tuple[jax.Array, jax.Array]:
  replicated = None
  for leaf in leaves:
    sharding = getattr(leaf, 'sharding', None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
      break
  return _jitted_report(replicated)(leaves)


def _path_name(path) -> str:
  parts = []
  for entry in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def inspect(tree: Any) -> tuple[dict[str, str], list[str]]:
  """({leaf path: 16-hex-digit digest}, [paths of leaves holding NaN/inf]) of `tree`.

  One jitted pass over the arrays where they live (sharded or not); only the per-leaf digests
  and flags come back to the host.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  names = [_path_name(path) for path, _ in flat]
  digests, finite = jax.device_get(_tree_report([leaf for _, leaf in flat]))
  table = {name: f'{int(a):08x}{int(b):08x}' for name, (a, b) in zip(names, digests)}
  return table, [name for name, ok in zip(names, finite) if not ok]


def record_digest(record: dict) -> str:
  """sha256 of a JSON record's canonical form (sorted keys), the 'integrity' entry left out."""
  body = {k: v for k, v in record.items() if k != 'integrity'}
  return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def seal(record: dict, state_digests: dict[str, str]) -> dict:
  """`record` with its 'integrity' entry: the state's digests and the record's own."""
  return {**record, 'integrity': {'algorithm': ALGORITHM, 'state': state_digests,
                                  'record_sha256': record_digest(record)}}


def verify(record: dict, state: Any, where: str, arrays: bool = True) -> None:
  """Raises CheckpointDamagedError when `state` or `record` differ from what was sealed, or
  when `state` holds a non-finite value. A record without 'integrity' (written before
  checksums existed) is checked for finiteness only.

  `arrays=False` checks the record alone: for a step whose files verified against
  checksums.json, the bytes are those written by a save that checked every array (finite,
  digested) -- a second pass over the state would find nothing new.
  """
  from senet_jax.errors import CheckpointDamagedError
  sealed = record.get('integrity')
  if not arrays and isinstance(sealed, dict):
    if sealed.get('record_sha256') != record_digest(record):
      raise CheckpointDamagedError(f'{where}: the checkpoint record (meta) fails its checksum')
    return
  digests, nonfinite = inspect(state)
  if nonfinite:
    raise CheckpointDamagedError(f'{where}: {nonfinite[0]} holds NaN/inf'
                                 f'{f" (and {len(nonfinite) - 1} more arrays)" if len(nonfinite) > 1 else ""}')
  if sealed is None:
    return
  if not isinstance(sealed, dict) or sealed.get('algorithm') != ALGORITHM:
    raise CheckpointDamagedError(f'{where}: unknown checksum record {str(sealed)[:80]!r}')
  if sealed.get('record_sha256') != record_digest(record):
    raise CheckpointDamagedError(f'{where}: the checkpoint record (meta) fails its checksum')
  expected = sealed.get('state') or {}
  for name, digest in digests.items():
    if expected.get(name) != digest:
      raise CheckpointDamagedError(
          f'{where}: {name} fails its checksum (saved {expected.get(name)}, read {digest})')
  missing = sorted(set(expected) - set(digests))
  if missing:
    raise CheckpointDamagedError(f'{where}: {missing[0]} was saved but not restored')


def _file_digests(step_dir: str) -> dict[str, str]:
  import google_crc32c
  digests = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel == FILES_NAME or rel.startswith(FILES_NAME + '.'):
        continue
      crc = google_crc32c.Checksum()
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
          crc.update(block)
      digests[rel] = crc.hexdigest().decode()
  return digests


def seal_files(step_dir: str) -> None:
  """Writes `step_dir/checksums.json` (CRC-32C of every file) atomically: call once the step
  is committed. Does nothing if the step is gone (the retention policy may have removed it)."""
  if not os.path.isdir(step_dir):
    return
  tmp = os.path.join(step_dir, f'{FILES_NAME}.tmp')
  with open(tmp, 'w') as f:
    json.dump({'algorithm': 'crc32c', 'files': _file_digests(step_dir)}, f, indent=0)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, FILES_NAME))


def verify_files(step_dir: str) -> bool:
  """Raises CheckpointDamagedError when a file listed in `checksums.json` is missing or differs.
  Returns False when the step has no such file (killed between commit and seal), else True."""
  from senet_jax.errors import CheckpointDamagedError
  path = os.path.join(step_dir, FILES_NAME)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      expected = json.load(f)['files']
    assert isinstance(expected, dict)
  except Exception as err:  # noqa: BLE001 - a damaged list is a damaged checkpoint
    raise CheckpointDamagedError(f'{path} is unreadable ({type(err).__name__})') from None
  actual = _file_digests(step_dir)
  for rel, digest in sorted(expected.items()):
    if rel not in actual:
      raise CheckpointDamagedError(f'{step_dir}: {rel} is missing')
    if actual[rel] != digest:
      raise CheckpointDamagedError(f'{step_dir}: {rel} fails its CRC-32C checksum')
  return True
