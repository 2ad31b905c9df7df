"""orbax checkpoints of the whole train state plus a JSON record (config, input position, ...).

Layout: `workdir/checkpoints/<step>/{state,meta}`. Saves are asynchronous; orbax writes each
step into a temporary directory and renames it when complete, so a killed write never looks
like a finished checkpoint. The last `keep` checkpoints are kept, plus the best by eval top-1.
"""
from __future__ import annotations

import glob
import logging
import os
import threading
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from senet_jax.errors import (CheckpointDamagedError, CheckpointError,  # noqa: F401 (re-exported)
                              CheckpointMismatchError, NonFiniteError, write_failure_cause)
from senet_jax.training import integrity
from senet_jax.utils import quiet

BROKEN = '.broken'  # suffix of set-aside (damaged) checkpoint directories
# What orbax puts in every step directory it writes: a numbered entry holding none of these was
# not written by the trainer, and is never overwritten, deleted or renamed.
_ORBAX_MARKERS = ('_CHECKPOINT_METADATA', 'commit_success.txt', 'state', 'meta')


def _not_missing_metrics_note(record) -> bool:
  # best_fn (set so that metrics reach the disk) makes orbax warn at every save without eval
  # metrics; those saves are meant to have none.
  return 'did not provide metrics' not in str(record.msg)


logging.getLogger('absl').addFilter(_not_missing_metrics_note)


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


def first_shape_mismatch(saved: Any, target: Any, extra_ok: bool = True) -> str | None:
  """Describes the first parameter whose saved shape differs from the target, or is missing.

  With `extra_ok=False` an entry the checkpoint has and the target lacks is a mismatch too
  (a model whose parameters are a subset of the saved ones does not fit it either).
  """
  saved_shapes = flat_shapes(saved)
  target_shapes = flat_shapes(target)
  for name, shape in target_shapes.items():
    if name not in saved_shapes:
      return f'{name} is missing from the checkpoint (expected shape {shape})'
    if saved_shapes[name] != shape:
      return f'{name}: checkpoint has shape {saved_shapes[name]}, the model expects {shape}'
  extra = [name for name in saved_shapes if name not in target_shapes]
  if extra and not extra_ok:
    return f'the checkpoint has {extra[0]} (and {len(extra) - 1} more) that the model lacks'
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
    # best_fn makes orbax write each checkpoint's metrics to disk (it does not without it), so
    # the best-by-top-1 is still known after a restart; the preservation policy decides.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        best_fn=(lambda m: m['top1']) if keep_best else None, best_mode='max',
        enable_async_checkpointing=async_save, create=True)
    # Explicit handlers: item_metadata() can then describe a checkpoint before restoring it.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})
    self._writing = None  # step of the save that may still be in flight
    self._sealing = None  # thread writing the file checksums of the last committed step
    check_no_foreign_entries(self.directory)

  def latest_step(self) -> int | None:
    """Newest complete checkpoint step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints orbax knows about, oldest first."""
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Starts an (async) save of `state` and `meta` at `step`: the one path of every save.

    A state holding NaN/inf in any leaf raises NonFiniteError and nothing is written. The saved
    record carries a checksum of every array and of itself (training/integrity.py), verified on
    restore. A failed write (disk full, unwritable directory) raises CheckpointError saying so;
    orbax writes into a temporary directory first, so the previous checkpoints stay intact.
    """
    if self._writing is not None:
      self.wait()  # surfaces a failure of the previous save under its own step number
    digests, nonfinite = integrity.inspect(state)
    if nonfinite:
      raise NonFiniteError(
          f'the state at step {step} holds NaN/inf ({nonfinite[0]}'
          f'{f" and {len(nonfinite) - 1} more arrays" if len(nonfinite) > 1 else ""}); it was '
          f'not saved. Checkpoints kept: {complete_steps(self.directory) or "none"}')
    target = os.path.join(self.directory, str(step))
    if os.path.lexists(target):  # orbax would replace it
      raise CheckpointError(
          f'{target} already exists and the trainer did not write it in this run; move it out '
          f'of {self.directory} and rerun (nothing was deleted)')
    meta = integrity.seal(meta, digests)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      started = self.manager.save(step, args=args, metrics=metrics, force=force)
    except Exception as err:  # noqa: BLE001 - re-raised with context
      raise self._write_error(step, err) from err
    self._writing = step if started else None
    return started

  def check(self) -> None:
    """Raises CheckpointError as soon as a background save has failed (call once per step)."""
    # Single process only: with several, a host-local view could stop one process alone; there
    # the next save (which waits for this one on every process) reports the failure.
    if (self._writing is not None and jax.process_count() == 1
        and not self.manager.is_saving_in_progress()):
      self.wait()  # the save has ended: cheap, and raises its error if it failed

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    try:
      self._join_sealing()
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as err:  # noqa: BLE001 - re-raised with context
      raise self._write_error(self._writing, err) from err
    if self._writing is not None and jax.process_index() == 0:
      # Committed: list its files' checksums in the background (hashing every byte of the
      # step would otherwise stall the training loop); joined by the next wait() and close().
      self._sealing = (self._writing, threading.Thread(
          target=self._seal, args=(self._writing,), daemon=True))
      self._sealing[1].start()
    self._writing = None

  def _seal(self, step: int) -> None:
    try:
      integrity.seal_files(os.path.join(self.directory, str(step)))
    except OSError as err:  # reported by _join_sealing, under this step's number
      self._seal_error = err

  def _join_sealing(self) -> None:
    if self._sealing is None:
      return
    step, thread = self._sealing
    thread.join()
    self._sealing = None
    err, self._seal_error = getattr(self, '_seal_error', None), None
    if err is not None:
      raise self._write_error(step, err)

  def _write_error(self, step, err) -> CheckpointError:
    # What is on disk, not orbax's in-memory list: a committed step is a directory named by
    # its number (orbax renames the temporary directory only once the write is complete).
    good = [s for s in complete_steps(self.directory) if s != step]
    # The OS's words first: orbax/tensorstore bury them at the end of a long message.
    cause = write_failure_cause(err)
    return CheckpointError(
        f'writing checkpoint {"" if step is None else step} under {self.directory} failed: '
        f'{cause + " -- " if cause else ""}{describe(err, 200)}. Previous checkpoints '
        f'are intact: {good or "none"}; free space or fix permissions, then rerun the same '
        f'command to resume')

  def restore_latest_usable(self, abstract_state, model_name: str = '') -> tuple[Any, dict,
                                                                                  int] | None:
    """Restores the newest checkpoint that reads back, setting aside damaged newer ones.

    Damage is a read failure of the checkpoint's own (I/O, format), an array or record that
    fails its checksum, or a NaN/inf in the restored state. A checkpoint that
    reads but does not fit the model is a config mistake: CheckpointMismatchError, nothing on
    disk touched. Damaged ones are renamed `<step>.broken` only once an older one has restored
    (never the only ones left); when none restores, nothing is renamed and CheckpointError says
    what failed. Returns None when there is no checkpoint at all (and none set aside).
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self.restore(step, abstract_state, model_name)
      except CheckpointError:
        raise
      except Exception as err:  # noqa: BLE001 - a read failure after the structure matched
        reason = describe(err)
        logging.warning('checkpoint %s/%d is unreadable (%s); trying an older one',
                        self.directory, step, reason)
        damaged.append((step, reason))
        continue
      for bad, _ in damaged:
        self._set_aside(bad)
      if damaged:
        logging.warning('resumed from step %d; skipped broken checkpoints %s (kept as '
                        '<step>%s)', step, [s for s, _ in damaged], BROKEN)
      return state, meta, step
    if damaged:
      details = '; '.join(f'{s}: {r}' for s, r in damaged)
      raise CheckpointError(
          f'no usable checkpoint in {self.directory}: every one failed to read ({details}). '
          f'Nothing was renamed. Restore them from a backup, or move the directory away to '
          f'start from scratch')
    aside = set_aside_checkpoints(self.directory)
    if aside:
      raise CheckpointError(
          f'{self.directory} holds only set-aside damaged checkpoints ({", ".join(aside)}); '
          f'refusing to start from scratch. To retry one, rename it back (e.g. `mv '
          f'{aside[-1]} {aside[-1].split(".")[0]}`); to start over, move them out of '
          f'{self.directory}')
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      if os.path.isdir(src):
        dst, n = f'{src}{BROKEN}', 1
        while os.path.exists(dst):  # the fallback retrains to the same step numbers
          n += 1
          dst = f'{src}{BROKEN}-{n}'
        try:
          os.rename(src, dst)
        except OSError as err:
          raise CheckpointError(
              f'cannot set aside damaged checkpoint {src} ({type(err).__name__}: '
              f'{err.strerror}); make {self.directory} writable or move {step} out of it '
              f'by hand, then rerun') from err
    self.manager.reload()

  def restore(self, step: int, abstract_state, model_name: str = '') -> tuple[Any, dict]:
    """Restores `step` straight into the shardings carried by `abstract_state`.

    Raises CheckpointMismatchError (naming the saved and configured models) when the saved
    tree differs from `abstract_state` in structure or shapes; other failures propagate.
    """
    files_verified = integrity.verify_files(os.path.join(self.directory, str(step)))
    saved = self.manager.item_metadata(step)
    if saved is not None and saved.get('state') is not None:
      target = flax.serialization.to_state_dict(abstract_state)
      mismatch = first_shape_mismatch(_as_tree(saved['state']), target, extra_ok=False)
      if mismatch:
        saved_model = self._saved_model(step)
        raise CheckpointMismatchError(
            f'checkpoint {self.directory}/{step} holds model {saved_model!r}, which does not '
            f'fit the configured {model_name or "model"!r}: {mismatch}. Use the config it was '
            f'trained with, or another --workdir (nothing on disk was changed)')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    meta = dict(restored['meta'] or {})
    integrity.verify(meta, restored['state'], f'{self.directory}/{step}',
                     arrays=not files_verified)
    return restored['state'], meta

  def _saved_model(self, step: int) -> str:
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return str(dict(meta['meta'] or {}).get('model', 'unknown'))
    except Exception:  # noqa: BLE001 - only for the message
      return 'unknown'

  def close(self) -> None:
    """Waits for pending saves and their file checksums (raising CheckpointError on failure),
    then closes."""
    self.wait()
    try:
      self._join_sealing()
    finally:
      self.manager.close()


def complete_steps(directory: str) -> list[int]:
  """Steps of the committed checkpoints on disk (directories named by a number)."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def foreign_entries(directory: str) -> list[str]:
  """Numbered entries of `directory` that are not orbax checkpoints (a file, a link, a directory
  without any of orbax's files): orbax would take them for steps and overwrite or delete them."""
  try:
    names = sorted(n for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []
  foreign = []
  for name in names:
    path = os.path.join(directory, name)
    if (os.path.islink(path) or not os.path.isdir(path)
        or not any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS)):
      foreign.append(name)
  return foreign


def check_no_foreign_entries(directory: str) -> None:
  """Raises CheckpointError naming the numbered entries of `directory` that orbax did not
  write: orbax would take them for steps and overwrite or delete them."""
  foreign = foreign_entries(directory)
  if foreign:
    raise CheckpointError(
        f'{os.path.abspath(directory)} holds {", ".join(foreign)}, which the trainer did not '
        f'write (no orbax checkpoint inside); move it out of {os.path.abspath(directory)} -- '
        f'the trainer never deletes or renames what it did not write')


def describe(err: BaseException, limit: int = 200) -> str:
  """'Type: first line of the message' of an exception, readable whatever the library put in it
  (some tensorstore errors render as a bound method; their args or cause say more)."""
  text = str(err)
  if not text.strip() or '<bound method' in text:
    text = next((str(a) for a in getattr(err, 'args', ()) if '<bound method' not in str(a)),
                '') or (describe(err.__cause__, limit) if err.__cause__ else repr(err))
  return f'{type(err).__name__}: {(text.splitlines() or [""])[0][:limit]}'


def _has_item(directory: str, step: int, item: str) -> bool:
  return os.path.isdir(os.path.join(directory, str(step), item))


def set_aside_checkpoints(directory: str) -> list[str]:
  """Names of the damaged checkpoints set aside in `directory` (`<step>.broken[-n]`)."""
  return sorted((os.path.basename(p) for p in glob.glob(os.path.join(directory, f'*{BROKEN}*'))),
                key=lambda n: (int(n.split('.')[0]) if n.split('.')[0].isdigit() else -1, n))


def _as_tree(metadata) -> Any:
  tree = getattr(metadata, 'tree', metadata)
  return tree


def load_params(directory: str) -> dict:
  """Reads params / batch_stats (numpy, on host) of the newest checkpoint under `directory`.

  `directory` is a training workdir, its `checkpoints/` folder, or a converter output. Works
  whatever devices wrote the checkpoint (arrays are restored onto this process's first device).
  """
  with quiet.orbax_read_only():  # orbax warns three times about any read-only manager
    return _load_params(directory)


def open_newest(directory: str) -> tuple[str, ocp.CheckpointManager, int] | None:
  """(folder, read-only manager, step) of the newest checkpoint under `directory` (a training
  workdir, its `checkpoints/` folder or a converter output), or None: the one way the readers
  open a checkpoint they did not write."""
  for candidate in (os.path.join(directory, 'checkpoints'), directory):
    if not os.path.isdir(candidate):
      continue
    manager = ocp.CheckpointManager(
        os.path.abspath(candidate), options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})
    step = manager.latest_step()
    if step is not None:
      return candidate, manager, step
  return None


def _load_params(directory: str) -> dict:
  found = open_newest(directory)
  if found is None:
    raise CheckpointError(f'no checkpoint found under {directory!r} (config.init_from)')
  candidate, manager, step = found
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    files_verified = integrity.verify_files(os.path.join(candidate, str(step)))
    saved = _as_tree(manager.item_metadata(step)['state'])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          saved, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))
    items = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        **({'meta': ocp.args.JsonRestore()} if _has_item(candidate, step, 'meta') else {})))
    state = items['state']
    integrity.verify(dict(items.get('meta') or {}), state, f'{candidate}/{step}',
                     arrays=not files_verified)
  except Exception as err:  # noqa: BLE001 - damaged files: one line naming the checkpoint
    raise CheckpointError(f'checkpoint {candidate}/{step} is unreadable ({describe(err)})'
                          ) from None
  return {k: jax.tree.map(np.asarray, state[k]) for k in ('params', 'batch_stats') if k in state}


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
