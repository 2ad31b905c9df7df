r"""The NNX training step's overhead over the Linen one: same model, same batch, same update.

    python benchmarks/nnx_overhead.py                    # efficientnet_b0, 64 px, batch 16
    python benchmarks/nnx_overhead.py --models=se_resnet18 --res=224 --steps=15

For each model, in one process: the Linen step (`jax.jit` over params, BatchNorm statistics,
Adam state and a fresh dropout key), and the same step written in NNX on the `senet_jax.nnx`
model (`nnx.Optimizer(model, optax.adam, wrt=nnx.Param)`, dropout keys from the model's Rngs)
under `nnx.jit` (graph mode, what the NNX docs show), `nnx.jit(graph=False)` (tree mode),
`nnx.cached_partial` (Flax's remedy for graph-mode call overhead) and `nnx.split` once +
`jax.jit` over the state's arrays (the functional pattern of Flax's performance guide). All
start from the same variables and donate their state (as Flax advises for the model and
optimizer), so no variant copies it. Single steps alternate between the variants after
`--warmup` steps each, so machine noise hits all; the script prints per variant the median ms
per step, the ratio to Linen and the difference in ms, and the median time of a call of the
same wrapper around a function that computes nothing: the per-call cost of each wrapper's
state handling, which grows with the number of variables, not with the model's compute.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import senet_jax  # noqa: E402,F401  (XLA:CPU flags before the first computation)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from senet_jax import nnx as senet_nnx  # noqa: E402


def linen_step(model, tx, noop: bool = False):
  """The plain Linen training step (as benchmarks/plain_import.py's user script)."""
  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, stats, opt_state, x, y, key):
    if noop:  # the state in and out, nothing computed
      return params, stats, opt_state, y.sum()
    def loss_fn(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'], rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new['batch_stats'], opt_state, loss
  return step


def nnx_train_step(model, optimizer, x, y):
  """The NNX training step (as examples/nnx_finetune.py)."""
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def nnx_noop(model, optimizer, x, y):
  """Nothing computed: what is left is the wrapper's per-call handling of the state."""
  del model, optimizer, x
  return y.sum()


def variants(reference, x, y, noop: bool, lr: float = 1e-3):
  """{variant: one-step callable returning the loss}, all from the same initial variables."""
  tx = optax.adam(lr)
  variables = copied(senet_nnx.linen_variables(reference))
  state = {'params': variables['params'], 'stats': variables['batch_stats'],
           'opt': tx.init(variables['params']), 'i': 0}
  step = linen_step(reference.to_nnx__module, tx, noop)
  key = jax.random.key(1)

  def linen():
    state['params'], state['stats'], state['opt'], loss = step(
        state['params'], state['stats'], state['opt'], x, y, jax.random.fold_in(key, state['i']))
    state['i'] += 1
    return loss

  out = {'linen jax.jit': linen}
  fn = nnx_noop if noop else nnx_train_step
  donate = ('model', 'optimizer')
  graph_step = nnx.jit(fn, donate_argnames=donate)
  tree_step = nnx.jit(fn, graph=False, donate_argnames=donate)
  for label in ('nnx.jit', 'nnx.jit(graph=False)', 'nnx.cached_partial', 'nnx.split+jax.jit'):
    model = nnx.clone(reference)
    nnx.update(model, copied(nnx.state(model)))  # buffers of its own: each variant donates
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if label == 'nnx.cached_partial':
      cached = nnx.cached_partial(graph_step, model, optimizer)
      out[label] = lambda cached=cached: cached(x, y)
    elif label == 'nnx.split+jax.jit':
      out[label] = functional_step(fn, model, optimizer, x, y)
    else:
      wrapped = graph_step if label == 'nnx.jit' else tree_step
      out[label] = lambda w=wrapped, m=model, o=optimizer: w(m, o, x, y)
  return out


def functional_step(fn, model, optimizer, x, y):
  """Flax's low-overhead pattern: split once, `jax.jit` over the state's arrays, merge inside.

  The arrays travel as a flat list (jax.jit's C++ fast path), not as a State of Variables
  (each of which Python would flatten and rebuild per call).
  """
  graphdef, state = nnx.split((model, optimizer))
  leaves, treedef = jax.tree.flatten(state)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(leaves, x, y):
    model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
    loss = fn(model, optimizer, x, y)
    return jax.tree.leaves(nnx.state((model, optimizer))), loss

  def run():
    nonlocal leaves
    leaves, loss = step(leaves, x, y)
    return loss
  return run


def copied(tree):
  return jax.tree.map(jnp.copy, tree)


def timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def alternate(fns: dict, steps: int, warmup: int) -> dict:
  """{label: (median s per call, first call s)}, single calls alternating between variants."""
  first = {label: timed(fn) for label, fn in fns.items()}  # trace + compile
  for _ in range(warmup - 1):
    for fn in fns.values():
      timed(fn)
  times = {label: [] for label in fns}
  for _ in range(steps):
    for label, fn in fns.items():
      times[label].append(timed(fn))
  return {label: (statistics.median(t), first[label]) for label, t in times.items()}


def measure(name: str, res: int, batch: int, steps: int, warmup: int) -> dict:
  """Per variant: median s per training step, and per no-op call (the wrapper's own cost)."""
  x = jnp.asarray(np.random.RandomState(0).randn(batch, res, res, 3).astype(np.float32))
  y = jnp.asarray(np.random.RandomState(1).randint(0, 1000, batch))
  reference = senet_nnx.create_model(name, input_size=res, rngs=nnx.Rngs(0))
  train = alternate(variants(reference, x, y, noop=False), steps, warmup)
  noop = alternate(variants(reference, x, y, noop=True), 5 * steps, warmup)
  return {label: {'median_s': train[label][0], 'first_call_s': train[label][1],
                  'noop_call_s': noop[label][0]} for label in train}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='efficientnet_b0')
  p.add_argument('--res', type=int, default=64)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=9, help='timed steps per variant (median)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps per variant first')
  p.add_argument('--json', default='', help='write the results here')
  args = p.parse_args(argv)
  device = jax.devices()[0]
  print(f'{device.platform} ({device.device_kind}), {args.res} px, batch {args.batch}, median of '
        f'{args.steps} steps after {args.warmup} (no-op calls: {5 * args.steps}), load average '
        f'{os.getloadavg()[0]:.1f}')
  results = {}
  for name in args.models.split(','):
    res = measure(name, args.res, args.batch, args.steps, args.warmup)
    base = res['linen jax.jit']['median_s']
    for label, r in res.items():
      r.update(ratio=r['median_s'] / base, overhead_ms=1e3 * (r['median_s'] - base))
      print(f'{name:16s} {label:21s} {1e3 * r["median_s"]:8.2f} ms/step  x{r["ratio"]:.3f}  '
            f'{r["overhead_ms"]:+7.2f} ms | no-op call {1e3 * r["noop_call_s"]:6.2f} ms | '
            f'first call {r["first_call_s"]:.1f} s')
    results[name] = res
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'device': str(device), 'args': vars(args), 'results': results}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
