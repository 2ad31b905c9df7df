"""Rematerialisation of every model family's blocks, without touching the model files.

`flax.linen.intercept_methods` catches each call of a module directly under the top-level model
(a residual unit, MBConv block, Inception module, ... and the stem/head layers) and runs it under
flax's lifted `nn.checkpoint`: the backward pass recomputes the block's interior from its input
instead of storing it.

  remat='block':        every block is rematerialised (its input is the only residual);
  remat_policy='nothing': nothing inside a block is saved (least memory);
  remat_policy='conv':    convolution outputs are saved (recomputes only BatchNorm, activations
                          and SE gating: cheaper in time, more memory).
Values are unchanged (tested); only what is stored vs recomputed differs. A per-stage mode
would need the models to group their blocks into stage modules, which they do not.
"""
from __future__ import annotations

import threading
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

MODES = ('none', 'block')
POLICIES = ('nothing', 'conv')


_inside = threading.local()  # set while a block runs under its own checkpoint


def _is_block(context) -> bool:
  # Direct children of the top-level model: its blocks (and stem/head layers).
  return context.method_name == '__call__' and len(context.module.scope.path) == 1


def _is_array(a) -> bool:
  return isinstance(a, (jax.Array, np.ndarray)) or hasattr(a, 'aval')


def _block_checkpointer(policy):
  """Interceptor running each block under flax's lifted `nn.checkpoint` (jax.checkpoint with
  the block's variables threaded through): the backward pass recomputes the block from its
  input instead of storing its interior activations."""
  def interceptor(next_fun, args, kwargs, context):
    if getattr(_inside, 'active', False) or not _is_block(context):
      return next_fun(*args, **kwargs)
    method = getattr(type(context.module), context.method_name)
    is_array = [_is_array(a) for a in args]

    def run(module, *arrays):  # Python arguments (e.g. `train`) stay static via the closure
      it = iter(arrays)
      full = [next(it) if flag else a for a, flag in zip(args, is_array)]
      _inside.active = True
      try:
        return method(module, *full, **kwargs)
      finally:
        _inside.active = False
    arrays = [a for a, flag in zip(args, is_array) if flag]
    return nn.checkpoint(run, policy=policy, prevent_cse=True)(context.module, *arrays)
  return interceptor


def _policy(name: str):
  if name == 'nothing':
    return jax.checkpoint_policies.nothing_saveable

  def keep_convs(prim, *_, **__):
    return prim is jax.lax.conv_general_dilated_p
  return keep_convs


def rematerialize(forward: Callable, mode: str = 'none', policy: str = 'nothing') -> Callable:
  """`forward(*arrays)` (a function calling model.apply) with the given remat mode/policy.

  Every argument must be an array pytree (close over Python values such as `train`)."""
  if mode not in MODES:
    raise ValueError(f'config.remat={mode!r}; allowed: {list(MODES)}')
  if policy not in POLICIES:
    raise ValueError(f'config.remat_policy={policy!r}; allowed: {list(POLICIES)}')
  if mode == 'none':
    return forward

  def with_remat(*args):
    with nn.intercept_methods(_block_checkpointer(_policy(policy))):
      return forward(*args)
  return with_remat
