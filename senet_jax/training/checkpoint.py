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


def first_shape_mismatch(saved: Any, target: Any) -> str | None:
  """Describes the first parameter whose saved shape differs from the target, or is missing."""
  saved_flat = {jax.tree_util.keystr(p): v for p, v in
                jax.tree_util.tree_flatten_with_path(saved)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    name = jax.tree_util.keystr(path)
    if name not in saved_flat:
      return f'{name} is missing from the checkpoint (expected shape {tuple(leaf.shape)})'
    shape = tuple(getattr(saved_flat[name], 'shape', ()))
    if shape != tuple(leaf.shape):
      return f'{name}: checkpoint has shape {shape}, the model expects {tuple(leaf.shape)}'
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
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    """Newest complete checkpoint step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an (async) save of `state` and `meta` at `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, metrics=metrics, force=force)

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    self.manager.wait_until_finished()

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

  `directory` is a training workdir, its `checkpoints/` folder, or a converter output.
  """
  for candidate in (os.path.join(directory, 'checkpoints'), directory):
    if os.path.isdir(candidate):
      manager = ocp.CheckpointManager(os.path.abspath(candidate), item_names=('state', 'meta'),
                                      options=ocp.CheckpointManagerOptions(read_only=True))
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))
        state = restored['state']
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
