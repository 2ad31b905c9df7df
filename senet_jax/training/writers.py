"""Where the trainer's scalars go: TensorBoard always, Weights & Biases when configured.

Both are clu `MetricWriter`s behind one `AsyncMultiWriter`, so the trainer writes once.
`wandb` is imported only when `config.wandb_project` is set (it is not a requirement of the
package). The W&B run id is derived from the workdir, so a resumed run (same workdir) continues
the same W&B run; W&B drops the steps it already has (the steps a resume redoes after its
checkpoint), keeping the first values logged for them. WANDB_ENTITY, WANDB_MODE (offline: files
under workdir/wandb, `wandb sync` later), WANDB_API_KEY etc. are read by wandb itself.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np
from clu import metric_writers


def create(workdir: str, config=None, is_main: bool = True) -> metric_writers.MetricWriter:
  """TensorBoard events in `workdir` (+ W&B with config.wandb_project) on the main process;
  a writer that drops everything on the others."""
  if not is_main:
    return metric_writers.MultiWriter([])
  writers: list[metric_writers.MetricWriter] = [metric_writers.SummaryWriter(workdir)]
  project = config.get('wandb_project', '') if config is not None else ''
  if project:
    writers.append(WandbWriter(project, workdir, _plain_config(config)))
  return metric_writers.AsyncMultiWriter(writers)


def run_id(workdir: str) -> str:
  """A stable W&B run id for a workdir (its absolute path hashed): resumes continue the run."""
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


def _plain_config(config) -> dict:
  try:
    return json.loads(config.to_json_best_effort())
  except (AttributeError, ValueError):
    return {}


class WandbWriter(metric_writers.MetricWriter):
  """clu MetricWriter over a wandb run (scalars, images, texts, histograms, hparams)."""

  def __init__(self, project: str, workdir: str, config: dict | None = None):
    import wandb  # only here: nothing imports wandb unless config.wandb_project is set
    self._wandb = wandb
    name = os.path.basename(os.path.normpath(workdir))
    self._run = wandb.init(project=project, dir=workdir, id=run_id(workdir), name=name,
                           resume='allow', config=config or {})

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    self._run.log({k: np.asarray(v).tolist() for k, v in values.items()}, step=step)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._run.log({k: float(v) for k, v in scalars.items()}, step=step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    self._run.log({k: [self._wandb.Image(np.asarray(x)) for x in np.asarray(v)]
                   for k, v in images.items()}, step=step)

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    self._run.log({k: self._wandb.Video(np.asarray(v)) for k, v in videos.items()}, step=step)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    self._run.log({k: [self._wandb.Audio(np.asarray(x), sample_rate=sample_rate)
                       for x in np.asarray(v)] for k, v in audios.items()}, step=step)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._run.log({k: self._wandb.Html(f'<pre>{v}</pre>') for k, v in texts.items()}, step=step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None):
    self._run.log({k: self._wandb.Histogram(np.asarray(v), num_bins=(num_buckets or {}).get(k, 64))
                   for k, v in arrays.items()}, step=step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self):
    pass  # wandb streams on its own

  def close(self):
    self._run.finish()
    # finish() can return before wandb's service process has written the run (seen offline:
    # an empty run file); teardown waits for it, and main.py may end with os._exit next.
    self._wandb.teardown()
