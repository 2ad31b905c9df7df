"""Per-example evaluation outputs and their metrics: top-1/5, NLL, 15-bin ECE.

Label conventions (the TFDS features of each evaluation set):
- int labels ('label'): ImageNet, V2, Sketch, and A / R in the 1000-class index space;
- multi-hot labels ('real_label' -> (batch, classes)): ImageNet-ReaL. Top-k is correct when any
  of the k best classes is one of the example's labels; examples without any label are
  excluded (masked out), as in Beyer et al. 2020. The NLL of a multi-label example is
  -log P(correct set) = -log sum of the probabilities of its labels.
- a class subset (ImageNet-A / -R: 200 of the 1000 classes): the logits are restricted to the
  subset before anything is computed (softmax, top-k, NLL, confidence), as in Hendrycks et al.

No `from __future__ import annotations` here: clu reads the metric annotations at runtime.
"""

from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics

from senet_jax.training import steps

NUM_BINS = 15  # ECE binning: 15 equal-width confidence bins (Guo et al. 2017)


def bin_index(confidence: jax.Array, num_bins: int = NUM_BINS) -> jax.Array:
  """Bin of each confidence: bin b holds (b / n, (b + 1) / n]; 0 goes to the first bin."""
  return jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)


@flax.struct.dataclass
class Calibration(metrics.Metric):
  """Expected calibration error over fixed equal-width bins of the top-1 confidence.

  ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|. Bins keep sums, so batches, devices
  and processes merge exactly.
  """
  count: jax.Array        # (bins,) unmasked examples per bin
  confidence: jax.Array   # (bins,) sum of top-1 confidences
  correct: jax.Array      # (bins,) sum of top-1 correctness

  @classmethod
  def from_model_output(cls, confidence: jax.Array, top1: jax.Array, mask: jax.Array,
                        **_) -> 'Calibration':
    onehot = jax.nn.one_hot(bin_index(confidence), NUM_BINS) * mask[:, None]
    return cls(count=jnp.sum(onehot, 0), confidence=jnp.sum(onehot * confidence[:, None], 0),
               correct=jnp.sum(onehot * top1[:, None], 0))

  def merge(self, other: 'Calibration') -> 'Calibration':
    return type(self)(self.count + other.count, self.confidence + other.confidence,
                      self.correct + other.correct)

  def compute(self) -> jax.Array:
    return jnp.sum(jnp.abs(self.correct - self.confidence)) / jnp.maximum(jnp.sum(self.count), 1)


@flax.struct.dataclass
class SuiteMetrics(metrics.Collection):
  """Every evaluator's metric set; 'loss' is the NLL (no label smoothing at evaluation)."""
  loss: metrics.Average.from_output('loss')
  top1: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')
  ece: Calibration
  num_examples: steps.ExampleCount


def _multi_label_topk(logits: jax.Array, multi_hot: jax.Array, k: int) -> jax.Array:
  """1.0 where any of the k largest logits is one of the example's labels."""
  _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
  return jnp.any(jnp.take_along_axis(multi_hot, top, axis=-1) > 0, axis=-1).astype(jnp.float32)


def restrict(logits: jax.Array, labels: jax.Array, mask: jax.Array, subset: np.ndarray):
  """Logits, labels and mask in the subset's index space (labels outside it are masked)."""
  logits = logits[:, subset]
  if labels.ndim == 2:
    return logits, labels[:, subset], mask
  position = np.full(max(int(np.max(subset)) + 1, 1), -1, np.int32)
  position[subset] = np.arange(len(subset))
  safe = jnp.clip(labels, 0, len(position) - 1)
  mapped = jnp.where(labels < len(position), jnp.asarray(position)[safe], -1)
  return logits, jnp.maximum(mapped, 0), mask * (mapped >= 0)


def outputs(logits: jax.Array, labels: jax.Array, mask: jax.Array,
            subset: Sequence[int] | None = None) -> dict[str, jax.Array]:
  """Per-example loss (NLL), top1, top5, confidence and mask for SuiteMetrics."""
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  if subset is not None:
    logits, labels, mask = restrict(logits, labels, mask, np.asarray(subset, np.int64))
  log_probs = jax.nn.log_softmax(logits)
  if labels.ndim == 2:  # multi-hot (ReaL): unlabelled examples do not count
    has_label = jnp.any(labels > 0, axis=-1)
    mask = mask * has_label
    nll = -jax.nn.logsumexp(jnp.where(labels > 0, log_probs, -jnp.inf), axis=-1)
    nll = jnp.where(has_label, nll, 0.0)
    top1, top5 = (_multi_label_topk(logits, labels, k) for k in (1, 5))
  else:
    nll = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    top1, top5 = (steps.topk_correct(logits, labels, k) for k in (1, 5))
  return dict(loss=nll, top1=top1, top5=top5, confidence=jnp.exp(jnp.max(log_probs, -1)),
              mask=mask)


def flip_averaged_logits(apply_fn, variables, images: jax.Array) -> jax.Array:
  """Flip TTA: log of the mean *probabilities* of the image and its mirror image.

  Returned as logits (softmax gives back the averaged probabilities), so every metric is
  computed from the averaged distribution.
  """
  both = jnp.concatenate([images, images[:, :, ::-1]], axis=0)
  log_probs = jax.nn.log_softmax(apply_fn(variables, both).astype(jnp.float32))
  a, b = jnp.split(log_probs, 2, axis=0)
  return jnp.logaddexp(a, b) - jnp.log(2.0)
