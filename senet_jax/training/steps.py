"""Pure train and eval steps, losses and metrics (jit them with shardings in train.py).

No `from __future__ import annotations` here: clu reads the metric annotations at runtime.
"""

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics

from senet_jax.training import distill, optim, remat
from senet_jax.training.state import TrainState


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Training metrics; per-example values are averaged over unmasked examples.

  `loss` is the cross-entropy (against label-smoothed targets); `l2` is the weight-decay term
  (weight_decay x L2 penalty) that the optimised objective adds to it.
  """
  loss: metrics.Average.from_output('loss')
  l2: metrics.Average.from_output('l2')
  top1: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  grad_norm: metrics.Average.from_output('grad_norm')
  nonfinite: metrics.Average.from_output('nonfinite')


@flax.struct.dataclass
class ExampleCount(metrics.Metric):
  """Number of unmasked examples seen."""
  total: jax.Array

  @classmethod
  def from_model_output(cls, mask: jax.Array, **_) -> 'ExampleCount':
    return cls(total=jnp.sum(mask))

  def merge(self, other: 'ExampleCount') -> 'ExampleCount':
    return type(self)(total=self.total + other.total)

  def compute(self) -> jax.Array:
    return self.total


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  """Eval metrics over every (unmasked) example of the split."""
  loss: metrics.Average.from_output('loss')
  top1: metrics.Average.from_output('top1')
  top5: metrics.Average.from_output('top5')
  num_examples: ExampleCount


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits (ties: lowest index first)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross entropy in float32 (a bf16 log-softmax makes EfficientNet collapse)."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def soft_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot (or already soft, e.g. mixup) targets with label smoothing."""
  onehot = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
  return onehot * (1.0 - smoothing) + smoothing / num_classes


def hard_labels(labels: jax.Array) -> jax.Array:
  """Class indices for accuracy (argmax of soft labels)."""
  return labels if labels.ndim == 1 else jnp.argmax(labels, axis=-1)


def classification_outputs(logits, labels, mask, smoothing=0.0) -> dict[str, jax.Array]:
  """Per-example loss / top-1 / top-5 and the mask, as metric collections expect."""
  targets = soft_targets(labels, logits.shape[-1], smoothing)
  idx = hard_labels(labels)
  return dict(loss=cross_entropy(logits, targets), top1=topk_correct(logits, idx, 1),
              top5=topk_correct(logits, idx, 5), mask=mask)


def _micro_batches(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
  # (B, ...) -> (n, B / n, ...) taking every n-th example, so each micro-batch keeps the
  # device sharding of the batch axis (a contiguous split would put it on few devices).
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1),
                      batch)


def make_train_step(model, optimizer: optax.GradientTransformation, config,
                    schedule: Callable) -> Callable:
  """Returns train_step(state, batch) -> (state, TrainMetrics) for the given model/config."""
  wd_mask_fn = functools.partial(optim.weight_decay_mask,
                                 exclude_regex=config.weight_decay_exclude)
  accum = config.grad_accum_steps
  l2_weight = optim.loss_weight_decay(config)  # LARS/LAMB decay inside the optimizer instead

  def forward(params, batch_stats, image, rng):
    return model.apply({'params': params, 'batch_stats': batch_stats}, image, train=True,
                       mutable=['batch_stats'], rngs={'dropout': rng})
  forward = remat.rematerialize(forward, config.remat, config.remat_policy)

  def loss_fn(params, batch_stats, micro, rng):
    logits, new_vars = forward(params, batch_stats, micro['image'], rng)
    out = classification_outputs(logits, micro['label'], micro['mask'], config.label_smoothing)
    if 'teacher_logits' in micro:  # knowledge distillation (see training/distill.py)
      out['loss'] = distill.distillation_loss(logits, micro['teacher_logits'], out['loss'],
                                              config.distill.temperature, config.distill.alpha)
    data_loss = jnp.sum(out['loss'] * out['mask']) / jnp.maximum(jnp.sum(out['mask']), 1.0)
    l2 = optim.l2_penalty(params, wd_mask_fn(params))
    return data_loss + l2_weight * l2, (new_vars['batch_stats'], out)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if accum == 1:
      (_, (batch_stats, out)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
    else:
      def body(carry, xs):
        grads_sum, stats = carry
        micro, i = xs
        (_, (stats, out)), g = grad_fn(state.params, stats, micro, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, g), stats), out
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, batch_stats), outs = jax.lax.scan(
          body, (zeros, state.batch_stats), (_micro_batches(batch, accum), jnp.arange(accum)))
      grads = jax.tree.map(lambda g: g / accum, grads)
      out = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1), outs)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optim.ema_decay_at(state.step, config.ema_decay, config.ema_warmup)
    ema_on = config.ema_decay > 0
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=optim.ema_update(state.ema_params, params, decay) if ema_on else params,
        ema_batch_stats=(optim.ema_update(state.ema_batch_stats, batch_stats, decay)
                         if ema_on else batch_stats))
    nonfinite = 1.0 - jnp.isfinite(jnp.sum(out['loss'] * out['mask'])).astype(jnp.float32)
    per_example = lambda scalar: jnp.full_like(out['loss'], scalar)  # clu masks per example
    l2 = config.weight_decay * optim.l2_penalty(state.params, wd_mask_fn(state.params))
    step_metrics = TrainMetrics.single_from_model_output(
        **out, l2=per_example(l2), learning_rate=per_example(schedule(state.step)),
        grad_norm=per_example(optax.global_norm(grads)), nonfinite=per_example(nonfinite))
    return new_state, step_metrics

  return train_step


def _default_eval_outputs(logits, batch):
  return classification_outputs(logits, batch['label'], batch['mask'])


def make_eval_step(model, outputs_fn: Callable = _default_eval_outputs,
                   collection=EvalMetrics) -> Callable:
  """Returns eval_step(params, batch_stats, batch) -> `collection` (masked).

  `outputs_fn(logits, batch)` gives the per-example outputs the collection reads (the
  evaluation package passes its own for multi-label sets, class subsets and calibration).
  """
  def eval_step(params, batch_stats, batch):
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                         train=False)
    return collection.single_from_model_output(**outputs_fn(logits, batch))
  return eval_step
