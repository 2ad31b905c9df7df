"""TFDS -> per-process numpy batches, deterministic and resumable at any step.

Design (why): the training order is a pure function of (seed, step). Global example position
q = step * global_batch + process_index * local_batch + j lives in epoch q // N at offset
q % N of that epoch's permutation (seeded by (seed, epoch)). Every random augmentation is
seeded by (seed, q). So restoring the iterator at step k costs nothing (no replay, no shuffle
buffer in the checkpoint; the state is one integer), every process reads disjoint examples, and
the result does not depend on decode parallelism. This needs random access to records: TFDS
`data_source`s over ArrayRecord files (what MaxText uses). Decoding and augmentation run in
Grain with libjpeg-turbo/numpy (grain_pipeline.py; config.input_backend='grain', the default)
or in `tf.data` with parallel maps (tfdata_pipeline.py; 'tfdata', the TensorFlow extra). This
module routes (`make_train_iterator`, `eval_iterator`) and re-exports the shared,
TensorFlow-free parts (sources.py: sources, order, evaluation layout); it imports TensorFlow
only when a tf.data iterator is built.

Evaluation: each process takes a contiguous shard of the split; all processes run the same number
of batches, the missing tail padded and masked (mask 0), so metrics are exact over the split.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from senet_jax.data import image_ops
from senet_jax.data.image_ops import Preprocessing
from senet_jax.utils import tf_host
# Re-exported: callers use pipeline.open_source & co. (they are TensorFlow-free, in sources.py).
from senet_jax.data.sources import (  # noqa: F401
    InMemorySource, check_batch_size, epoch_permutation, eval_layout, eval_shard,
    example_indices, image_is_readable, num_classes_of, num_eval_steps, open_source,
    read_records, train_positions, warn_skipped)


def make_train_iterator(config, source, **kwargs):
  """The training iterator of `config.input_backend`: TrainIterator (tf.data) or Grain's."""
  if config.get('input_backend', 'grain') == 'grain':
    from senet_jax.data import grain_pipeline
    return grain_pipeline.TrainIterator(config, source, **kwargs)
  tf_host.require_tensorflow("config.input_backend='tfdata'")
  from senet_jax.data import tfdata_pipeline
  return tfdata_pipeline.TrainIterator(config, source, **kwargs)


def eval_iterator(source, prep: Preprocessing, batch_size: int, num_classes: int, *,
                  process_index: int = 0, process_count: int = 1, device_count: int = 1,
                  label_key: str = 'label') -> Iterator[dict[str, np.ndarray]]:
  """Yields padded, masked local eval batches covering this process's shard exactly once.

  `prep`: the eval transform; `batch_size`: the global eval batch (all processes together);
  `label_key`: the int feature 'label', or a sequence feature of classes (ImageNet-ReaL's
  'real_label'), delivered as a (batch, num_classes) multi-hot 'label'.
  """
  # A stored record (the tools) may name a resize method only tf.data has: it runs there.
  # (A training config is checked before compute instead: validate.check_data.)
  if prep.input_backend == 'grain' and not image_ops.needs_tensorflow(prep.interpolation):
    from senet_jax.data import grain_pipeline
    yield from grain_pipeline.eval_iterator(
        source, prep, batch_size, num_classes, process_index=process_index,
        process_count=process_count, device_count=device_count, label_key=label_key)
    return
  tf_host.require_tensorflow(f'input_backend={prep.input_backend!r}')
  from senet_jax.data import tfdata_pipeline
  yield from tfdata_pipeline.eval_iterator(
      source, prep, batch_size, num_classes, process_index=process_index,
      process_count=process_count, device_count=device_count, label_key=label_key)


def __getattr__(name: str):
  """pipeline.TrainIterator & co.: the tf.data backend's names, imported on first use."""
  if name in ('TrainIterator', '_train_index_batches', '_read_dataset'):
    from senet_jax.data import tfdata_pipeline
    return getattr(tfdata_pipeline, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
