"""The trainer, read top to bottom: mesh -> input -> model & state -> steps -> checkpoint -> loop.

`train_and_evaluate(config, workdir)` trains on every device of every process (data parallel,
batch sharded over a 1-D mesh, state replicated, global-batch BatchNorm by construction) and
evaluates raw and EMA weights over the whole eval split.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from senet_jax.data import pipeline
from senet_jax.models import builder
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import optim, preemption, steps
from senet_jax.training.state import abstract_state, create_sharded_state
from senet_jax.training.validate import ConfigError, validate_config, validate_model_input

PREEMPTED_EXIT_CODE = 42  # distinct exit status after a preemption checkpoint


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN/inf; the last good checkpoint is kept."""


def _log(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)


def build_model(config):
  """The configured model, through the package's one model builder."""
  return builder.build_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                             conv_impl=config.conv_impl, model_kwargs=config.model_kwargs)


def training_length(config, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps) from epochs or steps."""
  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  if config.num_epochs > 0:
    return steps_per_epoch, max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
  return steps_per_epoch, int(config.num_train_steps)


def _global_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate(eval_step, state, config, source, data_sharding) -> dict[str, float]:
  """Top-1 / top-5 / loss of raw and EMA weights over the whole eval split."""
  totals = {}
  for batch in pipeline.eval_iterator(config, source, process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      device_count=jax.device_count()):
    batch = _global_batch(batch, data_sharding)
    for prefix, params, stats in (('', state.params, state.batch_stats),
                                  ('ema_', state.ema_params, state.ema_batch_stats)):
      if prefix and config.ema_decay <= 0:
        continue
      m = eval_step(params, stats, batch)
      totals[prefix] = m if prefix not in totals else totals[prefix].merge(m)
  results = {}
  for prefix, m in totals.items():
    for name, value in m.compute().items():
      results[f'{prefix}{name}'] = float(value)
  return results


def _write_eval_json(workdir: str, step: int, results: dict) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'eval_results.json')
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f).get('history', [])
  history.append({'step': step, **results})
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'latest': history[-1], 'history': history}, f, indent=1)
  os.replace(tmp, path)  # never a half-written file


def check_shared_workdir(workdir: str, timeout_s: float = 10.0) -> None:
  """With several processes, fails within seconds if `workdir` is not one shared directory.

  (orbax would otherwise wait ~10 minutes for files the other processes never see.)
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  token = np.asarray(multihost_utils.broadcast_one_to_all(
      np.asarray(time.time_ns() % (2 ** 62), np.int64)))
  path = os.path.join(workdir, f'.shared_check_{int(token)}')
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      f.write('senet_jax')
  multihost_utils.sync_global_devices('shared_workdir_written')
  deadline = time.time() + timeout_s
  while not os.path.exists(path) and time.time() < deadline:
    time.sleep(0.2)
  seen = np.asarray(os.path.exists(path), np.int32)
  all_seen = multihost_utils.process_allgather(seen)
  if jax.process_index() == 0:
    os.remove(path)
  if not np.all(all_seen):
    missing = [i for i, ok in enumerate(np.ravel(all_seen)) if not ok]
    raise ConfigError(f'--workdir={workdir!r} is not shared: processes {missing} cannot see '
                      f'files written by process 0 (use a shared file system or a bucket)')


def _init_from(state, config, replicated, exclude: tuple[str, ...]):
  """Pretrained params/batch_stats except the top-level entries in `exclude` (the head)."""
  pretrained = ckpt_lib.load_params(config.init_from)
  params = ckpt_lib.merge_pretrained(jax.device_get(state.params), pretrained['params'], exclude)
  stats = jax.device_get(state.batch_stats)
  if 'batch_stats' in pretrained:
    stats = ckpt_lib.merge_pretrained(stats, pretrained['batch_stats'], exclude)
  params, stats = jax.device_put((params, stats), replicated)
  # Separate buffers for the EMA copies: the train step donates the whole state.
  ema_params, ema_stats = jax.device_put((params, stats), replicated, may_alias=False)
  return state.replace(params=params, batch_stats=stats, ema_params=ema_params,
                       ema_batch_stats=ema_stats)


def _check_finite(pending: list, first_step: int) -> None:
  flags = [float(m.nonfinite.compute()) for m in pending]
  bad = [i for i, f in enumerate(flags) if f > 0]
  if bad:
    raise NonFiniteLossError(f'non-finite loss at step {first_step + bad[0] + 1}; stopping. The '
                             'last checkpoint written before it is kept.')


def _summary_line(step, total, metrics, img_per_s) -> str:
  return (f'step {step}/{total} | loss {metrics["loss"]:.4f} | top1 {100 * metrics["top1"]:.2f}%'
          f' | top5 {100 * metrics["top5"]:.2f}% | lr {metrics["learning_rate"]:.5g} | '
          f'grad_norm {metrics["grad_norm"]:.3g} | {img_per_s:.1f} img/s')


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` (or `config.init_from`) without training."""
  return train_and_evaluate(config, workdir, eval_only=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       eval_only: bool = False) -> dict[str, Any]:
  """Trains and evaluates; returns the final eval metrics. Resumes from `workdir` if present."""
  # ---- Setup and mesh ------------------------------------------------------------------
  validate_config(config, workdir, jax.device_count(), jax.process_count(), eval_only)
  watcher = preemption.PreemptionWatcher()  # first: a SIGTERM from here on is handled
  os.makedirs(workdir, exist_ok=True)
  check_shared_workdir(workdir)
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  # ---- Input ---------------------------------------------------------------------------
  train_source = pipeline.open_source(config.dataset, config.train_split, config.data_dir)
  eval_source = pipeline.open_source(config.dataset, config.eval_split, config.data_dir)
  steps_per_epoch, total_steps = training_length(config, len(train_source))
  eval_every = (int(config.eval_every_epochs * steps_per_epoch)
                if config.eval_every_epochs > 0 else total_steps)

  # ---- Model, optimizer, state (planned with eval_shape, created into its shardings) ----
  model = build_model(config)
  validate_model_input(config, model)
  schedule = optim.create_schedule(config, steps_per_epoch, total_steps)
  optimizer = optim.create_optimizer(config, schedule)
  image_shape = (1, config.image_size, config.image_size, 3)
  rng = jax.random.PRNGKey(config.seed)
  state, state_shardings = create_sharded_state(model, optimizer, rng, image_shape, replicated)
  _log('model %s: %s parameters', config.model,
       f'{sum(p.size for p in jax.tree.leaves(state.params)):,}')

  # ---- Step functions ------------------------------------------------------------------
  train_step = jax.jit(steps.make_train_step(model, optimizer, config, schedule),
                       in_shardings=(state_shardings, data_sharding),
                       out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(model), out_shardings=replicated)

  # ---- Checkpoint: resume, or start from init_from -------------------------------------
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                       config.keep_checkpoints, config.keep_best_checkpoint)
  restored = checkpointer.restore_latest_usable(
      abstract_state(model, optimizer, image_shape, state_shardings))
  if restored is not None:
    state, _, latest = restored
    _log('resumed from step %d (%s)', latest, checkpointer.directory)
  elif config.init_from:
    # Fine-tuning re-initialises the head; evaluating converted weights keeps everything.
    exclude = () if eval_only else tuple(config.init_from_exclude)
    state = _init_from(state, config, replicated, exclude)
    _log('initialised from %s (re-initialised: %s)', config.init_from, exclude)
  elif eval_only:
    raise ConfigError(f'--mode=eval needs a checkpoint in {workdir}/checkpoints or '
                      'config.init_from')
  start_step = int(jax.device_get(state.step))
  if eval_only:
    total_steps = start_step
  meta_base = {'model': config.model, 'config': config.to_json_best_effort(),
               'preprocessing': {k: config[k] for k in (
                   'image_size', 'eval_crop_fraction', 'interpolation', 'mean_rgb', 'std_rgb')}}

  def save(step, metrics=None, force=False):
    checkpointer.save(step, state, {**meta_base, 'step': step, 'input_next_step': step},
                      metrics=metrics, force=force)

  # ---- Loop ----------------------------------------------------------------------------
  train_iter = pipeline.TrainIterator(
      config, train_source, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), device_count=jax.device_count())
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  hooks = [report]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
  if watcher.should_stop(start_step):  # SIGTERM before the first step: nothing new to save
    checkpointer.close()
    raise preemption.Preempted(start_step)
  pending, window_start, t0 = [], start_step, time.perf_counter()
  results = {}
  step = start_step
  while step < total_steps:
    batch = _global_batch(next(train_iter), data_sharding)
    with jax.transfer_guard_host_to_device('disallow'):
      state, step_metrics = train_step(state, batch)
    step += 1
    pending.append(step_metrics)
    for hook in hooks:
      hook(step)
    is_last = step == total_steps
    do_eval = step % eval_every == 0 or is_last
    do_save = step % config.checkpoint_every_steps == 0 or do_eval
    if step % config.log_every_steps == 0 or do_save or is_last:
      _check_finite(pending, window_start)
      merged = pending[0]
      for m in pending[1:]:
        merged = merged.merge(m)
      computed = {k: float(v) for k, v in merged.compute().items()}
      elapsed = time.perf_counter() - t0
      computed['images_per_second'] = len(pending) * config.batch_size / max(elapsed, 1e-9)
      writer.write_scalars(step, {f'train_{k}': v for k, v in computed.items()})
      _log(_summary_line(step, total_steps, computed, computed['images_per_second']))
      pending, window_start, t0 = [], step, time.perf_counter()
    if do_eval:
      with report.timed('eval'):
        results = evaluate(eval_step, state, config, eval_source, data_sharding)
      writer.write_scalars(step, {f'eval_{k}': v for k, v in results.items()})
      _write_eval_json(workdir, step, results)
      _log('eval at step %d: %s', step, ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
    if do_save:
      best_top1 = max(results.get('top1', 0.0), results.get('ema_top1', 0.0))
      save(step, {'top1': best_top1} if do_eval else None, force=is_last)
    if not is_last and watcher.should_stop(step):  # after the last step: simply finish
      _log('preemption requested: checkpoint at step %d, exiting', step)
      if not do_save:
        save(step, force=True)
      checkpointer.close()
      writer.flush()
      raise preemption.Preempted(step)
  checkpointer.close()
  writer.flush()
  if not results and start_step >= total_steps:  # already finished earlier: evaluate again
    results = evaluate(eval_step, state, config, eval_source, data_sharding)
  return results


CheckpointError = ckpt_lib.CheckpointError

__all__ = ['train_and_evaluate', 'evaluate_only', 'CheckpointError', 'ConfigError',
           'NonFiniteLossError', 'PREEMPTED_EXIT_CODE']
