"""Rematerialisation of every model family's blocks or stages, without touching the model files.

`flax.linen.intercept_methods` catches each call of a module directly under the top-level model
(a residual unit, MBConv block, Inception module, ... and the stem/head layers).

  remat='block':  each such call runs under flax's lifted `nn.checkpoint`: the backward pass
                  recomputes the block's interior from its input instead of storing it (the
                  input of every block is kept);
  remat='stage':  the models do not group their blocks into stage modules, so the forward is
                  traced once with every block's output named (`checkpoint_name`, an identity),
                  cut after the last block of each stage -- a stage being a run of consecutive
                  blocks with the same output shape (resolution and channels) -- and each piece
                  is run under `jax.checkpoint`: only the stage inputs (and the small values
                  crossing a cut, e.g. BatchNorm statistics) are kept;
  remat_policy='nothing': nothing inside a region is saved (least memory);
  remat_policy='conv':    convolution outputs are saved (recomputes only BatchNorm, activations
                          and SE gating: cheaper in time, more memory).
Values are unchanged (tested); only what is stored vs recomputed differs.
"""
from __future__ import annotations

import threading
from typing import Callable

import flax.linen as nn
import jax
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jax_core

MODES = ('none', 'block', 'stage')
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
  if mode == 'stage':
    return _stage_remat(forward, _policy(policy))

  def with_remat(*args):
    with nn.intercept_methods(_block_checkpointer(_policy(policy))):
      return forward(*args)
  return with_remat


_TAG = 'senet_jax.remat.block_output'


def _block_tagger(next_fun, args, kwargs, context):
  """Interceptor naming every block's array outputs (an identity) so that the traced forward
  shows where each block ends."""
  out = next_fun(*args, **kwargs)
  if _is_block(context):
    out = jax.tree.map(lambda y: checkpoint_name(y, _TAG) if _is_array(y) else y, out)
  return out


def _stage_ends(eqns) -> list[int]:
  """Indices of the equations ending a stage: the output of the last block of each run of
  consecutive blocks with the same output shape (the model's last block is not a cut)."""
  tags = [i for i, e in enumerate(eqns) if e.primitive.name == 'name' and
          e.params.get('name') == _TAG]
  shape = lambda i: eqns[i].outvars[0].aval.shape
  return [a for a, b in zip(tags[:-1], tags[1:]) if shape(a) != shape(b)]


def _segments(jaxpr, ends):
  """[(eqns, input vars, output vars)] of the pieces of `jaxpr` cut after each index in `ends`:
  a piece reads what earlier pieces or the inputs define and returns what later ones read."""
  bounds = [0] + [e + 1 for e in ends] + [len(jaxpr.eqns)]
  later = {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  pieces = []
  for a, b in reversed(list(zip(bounds[:-1], bounds[1:]))):
    eqns = jaxpr.eqns[a:b]
    defined = [v for e in eqns for v in e.outvars if not isinstance(v, jax_core.DropVar)]
    own = set(defined)
    inputs = list(dict.fromkeys(v for e in eqns for v in e.invars
                                if isinstance(v, jax_core.Var) and v not in own))
    pieces.append((eqns, inputs, [v for v in defined if v in later]))
    later = (later - own) | set(inputs)
  return pieces[::-1]


def _stage_remat(forward: Callable, policy) -> Callable:
  """`forward` traced with named block outputs, cut into stages, each under jax.checkpoint."""
  def tagged(*args):
    with nn.intercept_methods(_block_tagger):
      return forward(*args)

  def with_remat(*args):
    closed, out_shape = jax.make_jaxpr(tagged, return_shape=True)(*args)
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, jax.tree.leaves(args)))
    for eqns, inputs, outputs in _segments(jaxpr, _stage_ends(jaxpr.eqns)):
      piece = jax_core.ClosedJaxpr(jaxpr.replace(constvars=[], invars=inputs, outvars=outputs,
                                                 eqns=eqns), [])
      run = jax.checkpoint(lambda *a, p=piece: jax_core.jaxpr_as_fun(p)(*a), policy=policy,
                           prevent_cse=True)
      env.update(zip(outputs, run(*[env[v] for v in inputs])))
    flat = [v.val if isinstance(v, jax_core.Literal) else env[v] for v in jaxpr.outvars]
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)
  return with_remat
