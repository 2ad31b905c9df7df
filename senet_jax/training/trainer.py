"""The trainer, read top to bottom: mesh -> input -> model & state -> steps -> checkpoint -> loop.

`train_and_evaluate(config, workdir)` trains on every device of every process (a `data` x
`fsdp` mesh: batch sharded over both axes, state sharded over `fsdp` -- replicated when it is 1
-- global-batch BatchNorm by construction) and evaluates raw and EMA weights over the whole
eval split.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from senet_jax import errors, evaluation
from senet_jax.checkpoint import record as record_lib
from senet_jax.convert import hub
from senet_jax.data import pipeline
from senet_jax.models import builder, min_resolution
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import (config_diff, distill, mfu, optim, preemption, profiling,
                                progressive, steps, workdir_lock)
from senet_jax.training import memory
from senet_jax.training import progress as progress_lib
from senet_jax.training import sharding as sharding_lib
from senet_jax.training.state import abstract_state, create_sharded_state
from senet_jax.training.validate import ConfigError, validate_config, validate_model_input

PREEMPTED_EXIT_CODE = preemption.PREEMPTED_EXIT_CODE  # exit status after a preemption checkpoint
# The training loss (or a state leaf) became NaN/inf; the last good checkpoint is kept.
NonFiniteLossError = errors.NonFiniteError


def _log(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)


def build_model(config):
  """The configured model, through the package's one model builder."""
  return builder.build_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                             conv_impl=config.conv_impl, model_kwargs=config.model_kwargs)


def training_length(config, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps): num_train_steps when > 0, else num_epochs epochs.

  The rule and why (both > 0 must agree, checked before training) are in
  validate.training_length, next to the check that enforces it.
  """
  from senet_jax.training import validate
  return validate.training_length(config, num_train_examples)


def _global_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def evaluate(evaluators, state, config, data_sharding) -> dict[str, float]:
  """Top-1 / top-5 / NLL ('loss') / ECE of raw and EMA weights over every evaluator's split.

  The main evaluator's names are unprefixed (top1, ema_top1); others carry their name
  (real_top1, ema_real_top1): see senet_jax.evaluation.
  """
  weights = [('', state.params, state.batch_stats)]
  if config.ema_decay > 0:
    weights.append(('ema_', state.ema_params, state.ema_batch_stats))
  return evaluation.run_all(
      evaluators, weights, to_global=lambda batch: _global_batch(batch, data_sharding),
      process_index=jax.process_index(), process_count=jax.process_count(),
      device_count=jax.device_count())


def _write_eval_json(workdir: str, step: int, results: dict) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'eval_results.json')
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f).get('history', [])
  # A resumed run redoes the steps after its checkpoint: keep one entry per step.
  history = [h for h in history if h.get('step', -1) < step]
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


def _init_from(state, config, shardings, exclude: tuple[str, ...]):
  """Pretrained params/batch_stats except the top-level entries in `exclude` (the head)."""
  pretrained = ckpt_lib.load_params(hub.checkpoint_dir(config.init_from))
  params = ckpt_lib.merge_pretrained(jax.device_get(state.params), pretrained['params'], exclude)
  stats = jax.device_get(state.batch_stats)
  if 'batch_stats' in pretrained:
    stats = ckpt_lib.merge_pretrained(stats, pretrained['batch_stats'], exclude)
  params, stats = jax.device_put((params, stats), (shardings.params, shardings.batch_stats))
  # Separate buffers for the EMA copies: the train step donates the whole state.
  ema_params, ema_stats = jax.device_put(
      (params, stats), (shardings.ema_params, shardings.ema_batch_stats), may_alias=False)
  return state.replace(params=params, batch_stats=stats, ema_params=ema_params,
                       ema_batch_stats=ema_stats)


def _check_finite(pending: list, first_step: int) -> None:
  flags = [float(m.nonfinite.compute()) for m in pending]
  bad = [i for i, f in enumerate(flags) if f > 0]
  if bad:
    raise NonFiniteLossError(f'non-finite loss at step {first_step + bad[0] + 1}; stopping. The '
                             'last checkpoint written before it is kept.')


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` (or `config.init_from`) without training."""
  return train_and_evaluate(config, workdir, eval_only=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       eval_only: bool = False) -> dict[str, Any]:
  """Trains and evaluates; returns the final eval metrics. Resumes from `workdir` if present.

  The config is validated before anything is computed; a training run holds the workdir's
  lock (workdir_lock) for its whole life, so a second run on it stops at once.
  """
  validate_config(config, workdir, jax.device_count(), jax.process_count(), eval_only)
  # Before any compute: files in checkpoints/ that orbax would overwrite or delete.
  ckpt_lib.check_no_foreign_entries(os.path.join(workdir, 'checkpoints'))
  lock = (None if eval_only else
          workdir_lock.acquire_for_run(workdir, jax.process_index(), jax.process_count()))
  watcher = preemption.PreemptionWatcher()  # a SIGTERM / Ctrl-C from here on is handled
  try:
    return _train_and_evaluate(config, workdir, eval_only, watcher)
  finally:
    watcher.close()
    if lock is not None:
      lock.release()


def _train_and_evaluate(config, workdir: str, eval_only: bool, watcher) -> dict[str, Any]:
  # ---- Setup and mesh ------------------------------------------------------------------
  os.makedirs(workdir, exist_ok=True)
  check_shared_workdir(workdir)
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  # data x fsdp mesh: the batch over both axes, the state over fsdp (training/sharding.py).
  # Several TPU slices: data spans them over the DCN, fsdp stays inside each (mesh_dcn_data).
  mesh = sharding_lib.make_mesh(config.mesh_data, config.mesh_fsdp,
                                mesh_dcn_data=config.mesh_dcn_data)
  _log('mesh: %s', sharding_lib.describe_mesh(mesh))
  replicated, data_sharding = NamedSharding(mesh, P()), sharding_lib.batch_sharding(mesh)
  # TensorBoard (+ W&B with config.wandb_project); the log lines are our own.
  writer = progress_lib.create_writer(workdir, config)

  # ---- Input ---------------------------------------------------------------------------
  train_source = pipeline.open_source(config.dataset, config.train_split, config.data_dir)
  eval_specs = evaluation.specs_from_config(config)  # main split + config.evals
  eval_sources = [pipeline.open_source(s.dataset, s.split, config.data_dir) for s in eval_specs]
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
  if not eval_only:  # from shapes, before compiling: a step that cannot fit is refused
    memory.check_fits(config, model, optimizer, mesh)
  state, state_shardings = create_sharded_state(
      model, optimizer, rng, image_shape, lambda s: sharding_lib.state_shardings(s, mesh))
  _log('model %s: %s parameters', config.model,
       f'{sum(p.size for p in jax.tree.leaves(state.params)):,}')

  # ---- Step functions ------------------------------------------------------------------
  teacher = None if eval_only else distill.load_teacher(
      config, replicated, functools.partial(builder.build_model, conv_impl=config.conv_impl),
      ckpt_lib.load_params)

  def jit_train_step(step_model):
    step_fn = steps.make_train_step(step_model, optimizer, config, schedule)
    if teacher is not None:  # adds the frozen teacher's logits to every batch
      return distill.jit_with_teacher(step_fn, teacher, config, state_shardings, data_sharding,
                                      replicated)
    jitted = jax.jit(step_fn, in_shardings=(state_shardings, data_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return progress_lib.compile_on_first_call(jitted, 'train step', progress_lib.log)

  train_step = jit_train_step(model)
  evaluators = [evaluation.Evaluator(spec, model, evaluation.Preprocessing.from_config(config),
                                     config.num_classes, config.eval_batch_size, source=source,
                                     out_sharding=replicated)
                for spec, source in zip(eval_specs, eval_sources)]
  for evaluator in evaluators:
    evaluator.step = progress_lib.compile_on_first_call(
        evaluator.step, f'eval step ({evaluator.spec.name or config.eval_split})',
        progress_lib.log)
  stages = progressive.schedule_from_config(config, total_steps, min_resolution(model))
  if stages:  # one compiled step per stage (image size, dropout), built when first needed
    staged_steps = progressive.StepPerStage(
        stages, lambda stage: jit_train_step(progressive.stage_model(model, stage)))

  # ---- Checkpoint: resume, or start from init_from -------------------------------------
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                       config.keep_checkpoints, config.keep_best_checkpoint)
  restored = checkpointer.restore_latest_usable(
      abstract_state(model, optimizer, image_shape, state_shardings), config.model)
  if restored is not None:
    state, saved_meta, latest = restored
    if not eval_only:  # a different config would silently change the run's trajectory
      config_diff.check_resume_config(saved_meta.get('config'), config, workdir, latest,
                                      record=jax.process_index() == 0)
    _log('resumed from step %d (%s)', latest, checkpointer.directory)
  elif config.init_from:
    # Fine-tuning re-initialises the head; evaluating converted weights keeps everything.
    exclude = () if eval_only else tuple(config.init_from_exclude)
    state = _init_from(state, config, state_shardings, exclude)
    _log('initialised from %s (re-initialised: %s)', config.init_from, exclude)
  elif eval_only:
    raise ConfigError(f'--mode=eval needs a checkpoint in {workdir}/checkpoints or '
                      'config.init_from')
  start_step = int(jax.device_get(state.step))
  if eval_only:
    total_steps = start_step
  run_record = record_lib.Record.from_config(config)  # what every checkpoint says of the run

  def save(step, metrics=None, force=False):
    meta = dataclasses.replace(run_record, step=step, input_next_step=step).to_json()
    checkpointer.save(step, state, meta, metrics=metrics, force=force)

  # ---- Loop ----------------------------------------------------------------------------
  make_iter = lambda cfg, start: pipeline.make_train_iterator(  # config.input_backend
      cfg, train_source, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count(), device_count=jax.device_count())
  train_iter = (progressive.StagedIterator(stages, config, make_iter, start_step, log=_log)
                if stages else make_iter(config, start_step))
  progress = progress_lib.Progress(total_steps, start_step, config.batch_size, eval_every)
  # img/s per device and MFU (model FLOPs / the devices' peak) in the log lines.
  throughput = mfu.Throughput.from_config(model, config, jax.devices(), stages)
  profiler = profiling.StepProfiler.from_config(
      config, workdir, start_step, total_steps, paused=lambda: progress.excluded(is_eval=False))
  if watcher.should_stop(start_step):  # SIGTERM before the first step: nothing new to save
    checkpointer.close()
    raise watcher.stopped(start_step, saved=False)
  if start_step < total_steps:
    _log(progress_lib.loss_legend(config.label_smoothing, config.weight_decay))
    _log(throughput.describe(start_step))
  pending, window_start, t0 = [], start_step, time.perf_counter()
  results = {}
  step = start_step
  while step < total_steps:
    profiler.before(step)  # config.profile_steps: a trace of chosen steps into workdir/profile
    batch = _global_batch(next(train_iter), data_sharding)
    if stages:
      train_step = staged_steps.for_step(step)
    with jax.transfer_guard_host_to_device('disallow'):
      state, step_metrics = train_step(state, batch)
    step += 1
    pending.append(step_metrics)
    progress.step(step, step_metrics)
    profiler.after(step, step_metrics)
    checkpointer.check()  # a failed background save stops the run at once
    is_last = step == total_steps
    do_eval = step % eval_every == 0 or is_last
    do_save = step % config.checkpoint_every_steps == 0 or do_eval
    if step % config.log_every_steps == 0 or do_save or is_last:
      _check_finite(pending, window_start)
      merged = pending[0]
      for m in pending[1:]:
        merged = merged.merge(m)
      computed = {k: float(v) for k, v in merged.compute().items()}
      # Mean rate since the first step, compilation and evaluation excluded (as the ETA).
      steps_per_s = progress.steps_per_second() or len(pending) / max(
          time.perf_counter() - t0, 1e-9)
      computed['images_per_second'] = steps_per_s * config.batch_size
      computed['steps_per_second'] = steps_per_s
      computed.update(throughput.metrics(step, computed['images_per_second']))
      writer.write_scalars(step, progress_lib.grouped('train', computed))
      # The rate over the steps since the last log line (the line shows the mean since start).
      writer.write_scalars(step, throughput.scalars(
          step, progress.window_steps_per_second(), config.batch_size))
      progress.log(progress_lib.train_line(step, total_steps, computed, computed[
          'images_per_second'], steps_per_s, progress.eta()))
      pending, window_start, t0 = [], step, time.perf_counter()
    if do_eval:
      with progress.excluded():
        results = evaluate(evaluators, state, config, data_sharding)
      writer.write_scalars(step, progress_lib.grouped('eval', results))
      _write_eval_json(workdir, step, results)
      progress.log(f'eval at step {step}: {progress_lib.format_results(results)}')
    if do_save:
      best_top1 = max(results.get('top1', 0.0), results.get('ema_top1', 0.0))
      save(step, {'top1': best_top1} if do_eval else None, force=is_last)
    if not is_last and watcher.should_stop(step):  # after the last step: simply finish
      _log('stop requested: checkpoint at step %d, exiting', step)
      if not do_save:  # the same rule as every save: a non-finite loss is never written
        _check_finite(pending, window_start)
        save(step, force=True)
      progress.close()
      profiler.close(step_metrics)
      checkpointer.close()
      writer.close()
      raise watcher.stopped(step)
  progress.close()
  checkpointer.close()
  writer.flush()
  if not results and start_step >= total_steps:  # already finished earlier: evaluate again
    if not eval_only:
      _log('run already complete: step %d of %d in %s; nothing to train, evaluating its last '
           'checkpoint', start_step, total_steps, workdir)
    results = evaluate(evaluators, state, config, data_sharding)
    if eval_only:  # --mode=eval records its results like a training eval
      writer.write_scalars(start_step, progress_lib.grouped('eval', results))
      writer.flush()
      _write_eval_json(workdir, start_step, results)
  writer.close()  # ends a W&B run (main.py exits with os._exit: no atexit hooks)
  return results


CheckpointError = ckpt_lib.CheckpointError

__all__ = ['train_and_evaluate', 'evaluate_only', 'CheckpointError', 'ConfigError',
           'NonFiniteLossError', 'PREEMPTED_EXIT_CODE']
