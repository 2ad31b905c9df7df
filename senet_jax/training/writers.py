"""Where the trainer's scalars go: TensorBoard always, Weights & Biases when configured.

Without TensorFlow: clu's SummaryWriter (and clu.metric_writers' package, which imports it)
loads TensorFlow, ~4-6 s of a training process's start. `TensorBoardWriter` writes the same
events as `tf.summary.scalar` in a TF2 summary writer (a float32 scalar tensor with the scalars
plugin's metadata) from tensorboard's own protos and record framing; files go through
etils.epath, so a gs:// workdir works (epath reaches GCS through tf.io.gfile when TensorFlow is
installed, fsspec otherwise). The writers share one interface: write_scalars(step, {name:
float}), flush(), close().

`wandb` is imported only when `config.wandb_project` is set (it is not a requirement of the
package). The W&B run id is derived from the workdir, so a resumed run (same workdir) continues
the same W&B run; W&B drops the steps it already has (the steps a resume redoes after its
checkpoint), keeping the first values logged for them. WANDB_ENTITY, WANDB_MODE (offline: files
under workdir/wandb, `wandb sync` later), WANDB_API_KEY etc. are read by wandb itself.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import time
from typing import Any, Mapping

import numpy as np

_FILE_IDS = itertools.count()  # several writers of one process into one logdir: distinct files


def create(workdir: str, config=None, is_main: bool = True) -> 'MultiWriter':
  """TensorBoard events in `workdir` (+ W&B with config.wandb_project) on the main process;
  a writer that drops everything on the others."""
  if not is_main:
    return MultiWriter([])
  writers: list = [TensorBoardWriter(workdir)]
  project = config.get('wandb_project', '') if config is not None else ''
  if project:
    writers.append(WandbWriter(project, workdir, _plain_config(config)))
  return MultiWriter(writers)


class MultiWriter:
  """Sends every call to each of `writers` (none: drops everything)."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes {name: number} at `step` to every writer."""
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    """Makes what was written durable / visible (each writer's own meaning)."""
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    """Flushes and releases every writer (ends a W&B run)."""
    for w in self.writers:
      w.close()


class TensorBoardWriter:
  """A TensorBoard event file of scalar summaries in `logdir`, written without TensorFlow."""

  def __init__(self, logdir: str):
    from etils import epath
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._pb = (event_pb2, summary_pb2, tensor_pb2, types_pb2)
    self._metadata = metadata.create_summary_metadata(display_name='', description='')
    path = epath.Path(logdir)
    path.mkdir(parents=True, exist_ok=True)
    # TensorFlow's file name pattern (TensorBoard reads any events.out.tfevents.* file).
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_FILE_IDS)}.v2')
    self._file = (path / name).open('wb')
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    self.flush()  # the file exists from the start (TensorBoard lists the run)

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One event at `step` with a float32 scalar tensor per name (tf.summary.scalar's form)."""
    event_pb2, summary_pb2, tensor_pb2, types_pb2 = self._pb
    values = [summary_pb2.Summary.Value(
        tag=tag, metadata=self._metadata,
        tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(v)]))
        for tag, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    """Pushes the written events to the file (or the bucket)."""
    self._file.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if not self._file.closed:
      self._file.close()


def run_id(workdir: str) -> str:
  """A stable W&B run id for a workdir (its absolute path hashed): resumes continue the run."""
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


def _plain_config(config) -> dict:
  try:
    return json.loads(config.to_json_best_effort())
  except (AttributeError, ValueError):
    return {}


class WandbWriter:
  """clu's MetricWriter interface over a wandb run (scalars, images, texts, histograms,
  hparams), duck-typed: subclassing clu's class would import TensorFlow."""

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
