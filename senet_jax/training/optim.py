"""Learning-rate schedules, optimizers (incl. TensorFlow-semantics RMSProp) and weight decay.

Durations arrive in epochs and are converted to steps with `steps_per_epoch`; the base learning
rate is per 256 images and scales linearly with the global batch size.
"""
from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('cosine', 'exponential', 'step', 'linear', 'constant', 'poly')
OPTIMIZERS = ('sgd', 'rmsprop_tf', 'adamw', 'lars', 'lamb')
# Optimizers that apply weight decay themselves (inside the trust ratio), not as a loss term.
DECOUPLED_WEIGHT_DECAY = ('lars', 'lamb')


def scaled_learning_rate(base_lr: float, batch_size: int) -> float:
  """base_lr * batch_size / 256 (Goyal et al.; the official EfficientNet and ResNet recipes)."""
  if base_lr <= 0:
    raise ValueError(f'config.learning_rate must be > 0, got {base_lr}')
  return base_lr * batch_size / 256.0


def create_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then the configured decay (all in optimizer steps)."""
  if config.lr_schedule not in SCHEDULES:
    raise ValueError(f'config.lr_schedule={config.lr_schedule!r}; allowed: {list(SCHEDULES)}')
  peak = scaled_learning_rate(config.learning_rate, config.batch_size)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  after = max(total_steps - warmup, 1)
  if config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, after)
  elif config.lr_schedule == 'exponential':
    # Official EfficientNet: exponential_decay(staircase) counted from step 0 (warmup included).
    every = max(int(round(config.lr_decay_epochs * steps_per_epoch)), 1)
    decay = lambda step: peak * config.lr_decay_factor ** jnp.floor((step + warmup) / every)
  elif config.lr_schedule == 'step':
    bounds = {int(e * steps_per_epoch) - warmup: 0.1 for e in config.lr_step_epochs}
    decay = optax.piecewise_constant_schedule(peak, bounds)
  elif config.lr_schedule == 'linear':  # ShuffleNet / SE-ShuffleNet: linear decay to 0
    decay = optax.linear_schedule(peak, 0.0, after)
  elif config.lr_schedule == 'poly':  # LARS recipes (MLPerf ResNet-50): (1 - t/T)^power to 0
    decay = optax.polynomial_schedule(peak, 0.0, config.lr_poly_power, after)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


class RMSPropTFState(NamedTuple):
  """Mean square (initialised to 1 as in TF1) and momentum accumulators."""
  count: jax.Array
  ms: Any
  mom: Any


def rmsprop_tf(learning_rate: optax.Schedule, decay: float = 0.9, epsilon: float = 1e-3,
               momentum: float = 0.9) -> optax.GradientTransformation:
  """`tf.compat.v1.train.RMSPropOptimizer` exactly, as used by the official EfficientNet code.

      ms  <- decay * ms + (1 - decay) * g^2          (ms starts at 1)
      mom <- momentum * mom + lr_t * g / sqrt(ms + epsilon)
      w   <- w - mom

  Unlike optax.rmsprop, the learning rate is applied inside the momentum accumulator and
  epsilon inside the square root, which matters while the learning rate changes.
  """
  def init(params):
    return RMSPropTFState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.ones_like, params),
                          jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    lr = learning_rate(state.count)
    ms = jax.tree.map(lambda m, g: decay * m + (1 - decay) * g * g, state.ms, grads)
    mom = jax.tree.map(lambda v, g, m: momentum * v + lr * g / jnp.sqrt(m + epsilon),
                       state.mom, grads, ms)
    updates = jax.tree.map(lambda v: -v, mom)
    return updates, RMSPropTFState(state.count + 1, ms, mom)

  return optax.GradientTransformation(init, update)


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The configured optimizer; gradient clipping first when `grad_clip_norm` > 0."""
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f'config.optimizer={config.optimizer!r}; allowed: {list(OPTIMIZERS)}')
  if config.optimizer == 'sgd':
    opt = optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov)
  elif config.optimizer == 'rmsprop_tf':
    opt = rmsprop_tf(schedule, config.rmsprop_decay, config.rmsprop_epsilon, config.momentum)
  elif config.optimizer == 'adamw':
    opt = optax.adamw(schedule, weight_decay=0.0)  # decay is the L2 term in the loss
  else:
    opt = large_batch_optimizer(config.optimizer, schedule, config.weight_decay,
                                config.weight_decay_exclude, momentum=config.momentum,
                                trust_coefficient=config.lars_trust_coefficient,
                                eps=config.lars_epsilon)
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt


def large_batch_optimizer(name: str, learning_rate: optax.Schedule, weight_decay: float,
                          exclude_regex: str, momentum: float = 0.9,
                          trust_coefficient: float = 1e-3, eps: float = 0.0
                          ) -> optax.GradientTransformation:
  """LARS (You et al. 2017) or LAMB (You et al. 2020) with weight decay inside the update.

  Parameters matching `exclude_regex` (BatchNorm scale/bias, biases) get neither weight decay
  nor the layer-wise trust ratio: for them LARS is SGD with momentum and LAMB is Adam, as in
  tf.contrib LARSOptimizer's skip_list (official TPU EfficientNet / ResNet) and MLPerf.
  LARS:  u = g + wd w;  u *= eta ||w|| / (||u|| + eps);  v = m v + lr u;  w -= v.
  LAMB:  u = adam(g) + wd w;  u *= ||w|| / ||u||;  w -= lr u.
  """
  mask = functools.partial(weight_decay_mask, exclude_regex=exclude_regex)
  if name == 'lars':
    return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=mask,
                      trust_coefficient=trust_coefficient, eps=eps, trust_ratio_mask=mask,
                      momentum=momentum)
  if name == 'lamb':
    # optax.lamb masks only the weight decay; the trust ratio needs the same mask.
    return optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(), mask),
        optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f'config.optimizer={name!r} is not a large-batch optimizer (lars, lamb)')


def loss_weight_decay(config) -> float:
  """The L2 coefficient of the loss term: 0 for LARS/LAMB, which decay inside the update."""
  return 0.0 if config.optimizer in DECOUPLED_WEIGHT_DECAY else config.weight_decay


def weight_decay_mask(params, exclude_regex: str) -> Any:
  """Pytree of bools: True where the L2 term applies (path 'module/.../name' not matching)."""
  pattern = re.compile(exclude_regex) if exclude_regex else None

  def keep(path, _):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    return not (pattern and pattern.search(name))

  return jax.tree_util.tree_map_with_path(keep, params)


def l2_penalty(params, mask) -> jax.Array:
  """sum(w^2) / 2 over the masked parameters (TensorFlow's tf.nn.l2_loss)."""
  leaves = [jnp.sum(jnp.square(p.astype(jnp.float32))) for p, m in
            zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  return 0.5 * sum(leaves) if leaves else jnp.zeros([], jnp.float32)


def ema_decay_at(step, decay: float, warmup: bool) -> jax.Array:
  """EMA decay at `step`: constant, or min(decay, (1 + t) / (10 + t)) with warm-up."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema, new, decay) -> Any:
  """ema <- decay * ema + (1 - decay) * new, leaf by leaf."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)

