"""orbax checkpoints of the whole train state plus a JSON record (config, input position, ...).

Layout: `workdir/checkpoints/<step>/{state,meta}`. Saves are asynchronous; orbax writes each
step into a temporary directory and renames it when complete, so a killed write never looks
like a finished checkpoint. The last `keep` checkpoints are kept, plus the best by eval top-1.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used (wrong model, unreadable, ...); the message says why."""


def _key_name(entry) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/layer1_0/conv1/kernel': shape} with dict keys and sequence indices alike."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in flat}


def first_shape_mismatch(saved: Any, target: Any) -> str | None:
  """Describes the first parameter whose saved shape differs from the target, or is missing."""
  saved_shapes = flat_shapes(saved)
  for name, shape in flat_shapes(target).items():
    if name not in saved_shapes:
      return f'{name} is missing from the checkpoint (expected shape {shape})'
    if saved_shapes[name] != shape:
      return f'{name}: checkpoint has shape {saved_shapes[name]}, the model expects {shape}'
  return None


class Checkpointer:
  """Saves / restores `TrainState`s with an orbax CheckpointManager."""

  def __init__(self, directory: str, keep: int = 3, keep_best: bool = True,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    keep_policies = [policies.LatestN(n=keep)]
    if keep_best:
      keep_policies.append(policies.BestN(get_metric_fn=lambda m: m['top1'], n=1,
                                          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        enable_async_checkpointing=async_save, create=True)
    # Explicit handlers: item_metadata() can then describe a checkpoint before restoring it.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """Newest complete checkpoint step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an (async) save of `state` and `meta` at `step`.

    A failed write (disk full, unwritable directory) raises CheckpointError saying so; orbax
    writes into a temporary directory first, so the previous checkpoints stay intact.
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      return self.manager.save(step, args=args, metrics=metrics, force=force)
    except Exception as err:  # noqa: BLE001 - re-raised with context
      raise self._write_error(step, err) from err

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    try:
      self.manager.wait_until_finished()
    except Exception as err:  # noqa: BLE001 - re-raised with context
      raise self._write_error(None, err) from err

  def _write_error(self, step, err) -> CheckpointError:
    good = [s for s in self.all_steps() if s != step]
    return CheckpointError(
        f'writing checkpoint {"" if step is None else step} under {self.directory} failed: '
        f'{type(err).__name__}: {err}. Previous checkpoints are intact: {good or "none"}')

  def restore_latest_usable(self, abstract_state) -> tuple[Any, dict, int] | None:
    """Restores the newest checkpoint that reads back, skipping (and setting aside) broken ones.

    A checkpoint that does not fit the model raises at once (a config mistake, not damage). A
    broken one (truncated or missing files) is renamed `<step>.broken` with a warning and the
    next older one is tried; nothing is deleted. Returns None when there is no checkpoint.
    """
    skipped = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state)
      except CheckpointError:
        raise
      except Exception as err:  # noqa: BLE001 - any read failure means "damaged"
        logging.warning('checkpoint %s/%d is unreadable (%s: %s); setting it aside and trying '
                        'an older one', self.directory, step, type(err).__name__,
                        str(err).splitlines()[0][:200])
        skipped.append(step)
        self._set_aside(step)
        continue
      if skipped:
        logging.warning('resumed from step %d; skipped broken checkpoints %s (kept as '
                        '<step>.broken)', step, skipped)
      return state, meta, step
    if skipped:
      raise CheckpointError(f'no usable checkpoint in {self.directory}: every one is broken '
                            f'({skipped}, kept as <step>.broken)')
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      if os.path.isdir(src):
        os.replace(src, f'{src}.broken')
    self.manager.reload()

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """Restores `step` straight into the shardings carried by `abstract_state`."""
    saved = self.manager.item_metadata(step)
    if saved is not None and saved.get('state') is not None:
      target = flax.serialization.to_state_dict(abstract_state)
      mismatch = first_shape_mismatch(_as_tree(saved['state']), target)
      if mismatch:
        raise CheckpointError(
            f'checkpoint {self.directory}/{step} does not fit this model/config: {mismatch}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['meta'] or {})

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _as_tree(metadata) -> Any:
  tree = getattr(metadata, 'tree', metadata)
  return tree


def load_params(directory: str) -> dict:
  """Reads params / batch_stats (numpy, on host) of the newest checkpoint under `directory`.

  `directory` is a training workdir, its `checkpoints/` folder, or a converter output. Works
  whatever devices wrote the checkpoint (arrays are restored onto this process's first device).
  """
  for candidate in (os.path.join(directory, 'checkpoints'), directory):
    if not os.path.isdir(candidate):
      continue
    manager = ocp.CheckpointManager(
        os.path.abspath(candidate), options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={'state': ocp.StandardCheckpointHandler()})
    step = manager.latest_step()
    if step is None:
      continue
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = _as_tree(manager.item_metadata(step)['state'])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          saved, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
    return {k: jax.tree.map(np.asarray, state[k]) for k in ('params', 'batch_stats')
            if k in state}
  raise CheckpointError(f'no checkpoint found under {directory!r} (config.init_from)')


def merge_pretrained(fresh: dict, pretrained: dict, exclude: tuple[str, ...]) -> dict:
  """Takes pretrained values for every entry but the top-level names in `exclude` (the head).

  Shapes must agree outside `exclude`; the error names the first mismatch.
  """
  kept = {k: v for k, v in pretrained.items() if k not in exclude}
  target = {k: v for k, v in fresh.items() if k not in exclude}
  mismatch = first_shape_mismatch(kept, target)
  if mismatch:
    raise CheckpointError(f'config.init_from does not fit the model: {mismatch}')
  extra = sorted(set(kept) - set(target))
  if extra:
    logging.warning('init_from: ignoring checkpoint entries the model lacks: %s', extra)
  return {k: (v if k in exclude else jax.tree.map(lambda t, s: s.astype(t.dtype), v, kept[k]))
          for k, v in fresh.items()}
