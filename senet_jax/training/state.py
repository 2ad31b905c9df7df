"""The pure-functional train state and its creation straight into its shardings."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step needs and a checkpoint stores (besides the input position = step).

  `ema_params` / `ema_batch_stats` are the exponential moving averages used for evaluation
  (equal to the raw weights when EMA is off). `rng` is the base key; each step folds in `step`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any
  rng: jax.Array


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
                     image_shape) -> TrainState:
  """A fresh state (used under jit, via `jax.eval_shape` first to plan shardings)."""
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                         jnp.zeros(image_shape, jnp.float32), train=False)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=optimizer.init(params), ema_params=params,
                    ema_batch_stats=batch_stats, rng=state_rng)


def create_sharded_state(model, optimizer, rng, image_shape, sharding) -> tuple[TrainState, Any]:
  """Plans the state with `jax.eval_shape`, then builds it with a jit whose outputs land
  directly in their shardings. `sharding` is one Sharding for every leaf (replicated: data
  parallelism) or a function abstract_state -> shardings (e.g. the fsdp rule of
  training/sharding.py). Returns (state, state_shardings)."""
  abstract = jax.eval_shape(lambda r: init_train_state(model, optimizer, r, image_shape), rng)
  if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
    shardings = sharding(abstract)
  else:
    shardings = jax.tree.map(lambda _: sharding, abstract)
  init = jax.jit(init_train_state, static_argnums=(0, 1, 3), out_shardings=shardings)
  return init(model, optimizer, rng, tuple(image_shape)), shardings


def abstract_state(model, optimizer, image_shape, shardings) -> TrainState:
  """ShapeDtypeStructs of the state carrying their target shardings (for restoring)."""
  abstract = jax.eval_shape(
      lambda r: init_train_state(model, optimizer, r, image_shape), jax.random.PRNGKey(0))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
