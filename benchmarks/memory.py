"""Per-device memory of the training step, compile-only, on a simulated CPU mesh.

Three tables (nothing is executed except the small timing run):
  state:   bytes of the train state (params, batch_stats, optimizer slots, EMA) per device,
           replicated vs sharded over fsdp=N by training/sharding.py's rule (no compile);
  compile: XLA's memory analysis of the jitted train step (arguments, outputs, temporaries)
           at a small per-device batch for replicated / fsdp / fsdp with block or stage remat,
           and the largest per-device batch that fits 16 / 32 / 80 / 141 GiB, extrapolating
           the temporaries linearly from two batch sizes;
  residuals: bytes per image that the forward pass saves for the backward pass (the residuals
           of jax.vjp, from jax.eval_shape: no compile, independent of any XLA scheduler) without
           remat and with block / stage remat, plus the largest region's own residuals (what
           recomputing it holds at once), and the largest per-device batch for which these,
           the state and two params-sized buffers (gradients, update) fit 16 / 32 / 80 /
           141 GiB (an estimate: XLA's other temporaries are not counted);
  time:    step time with and without remat, side by side in one run on a small model.

  python benchmarks/memory.py --devices 8 --tables state,compile,time
  python benchmarks/memory.py --devices 1 --tables residuals --models efficientnet_b7@600

Modes: replicated | fsdp, optionally +block or +stage (remat), e.g. fsdp+stage.
--scheduler picks XLA:CPU's HLO scheduler (xla_cpu_scheduler_type). Neither its default nor
'memory' makes the CPU temporaries show what remat saves (docs/pod_scale.md: a 16-layer toy
whose backward needs >= 64 MiB of saved activations reports 9 MiB of temporaries), which is
why the `residuals` table counts the saved values from shapes instead.

Inputs are abstract (jax.ShapeDtypeStruct), so no full-size array is ever allocated; bf16
compute as in the EfficientNet recipes. XLA:CPU's accounting is a proxy for a TPU/GPU's: see
the README (Pod scale) for what it does and does not show.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

MODELS = (('efficientnet_b7', 600), ('efficientnet_b8', 672), ('efficientnet_l2', 800),
          ('senet154', 224), ('se_resnext101_32x4d', 224))
BUDGETS_GIB = (16, 32, 80, 141)
GIB = 2 ** 30


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--devices', type=int, default=8, help='simulated CPU devices (mesh size N)')
  p.add_argument('--tables', default='state,compile,time')
  p.add_argument('--models', default=','.join(f'{m}@{r}' for m, r in MODELS))
  p.add_argument('--state_devices', default='8,64', help='fsdp sizes for the state table')
  p.add_argument('--batches', default='1,2', help='two per-device batches to extrapolate from')
  p.add_argument('--modes', default='replicated,fsdp,fsdp+block,fsdp+stage')
  p.add_argument('--scheduler', default='default', choices=sorted(SCHEDULERS),
                 help="XLA:CPU's HLO scheduler")
  return p.parse_args()


SCHEDULERS = {'memory': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
              'concurrency': 'CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED', 'default': None}


ARGS = _parse() if __name__ == '__main__' else None
if ARGS is not None:  # the device count must be set before JAX initialises
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={ARGS.devices}')
  if SCHEDULERS[ARGS.scheduler]:
    os.environ['XLA_FLAGS'] += f' --xla_cpu_scheduler_type={SCHEDULERS[ARGS.scheduler]}'

  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import default  # noqa: E402
from senet_jax.models import create_model  # noqa: E402
from senet_jax.training import optim, remat as remat_lib, sharding, steps  # noqa: E402
# The per-device state and the forward's saved values, as the trainer's memory check counts
# them (one implementation).
from senet_jax.training.memory import residual_bytes, state_bytes  # noqa: E402,F401
from senet_jax.training.state import init_train_state  # noqa: E402


def make_config(model: str, remat: str = 'none'):
  """The model's recipe optimizer (RMSProp-TF for EfficientNet, SGD otherwise), EMA on, bf16."""
  config = default.get_config()
  config.update(dict(model=model, dtype='bfloat16', ema_decay=0.9999, remat=remat,
                     optimizer='rmsprop_tf' if model.startswith('efficientnet') else 'sgd'))
  return config


def abstract_setup(model_name: str, res: int, config):
  """(model, optimizer, schedule, abstract TrainState) without allocating anything."""
  model = create_model(model_name, dtype=jnp.bfloat16)
  schedule = optim.create_schedule(config, 1000, 100_000)
  opt = optim.create_optimizer(config, schedule)
  state = jax.eval_shape(lambda r: init_train_state(model, opt, r, (1, res, res, 3)),
                         jax.random.PRNGKey(0))
  return model, opt, schedule, state


def worst_leaves(state, fsdp: int, top: int = 3) -> str:
  """The leaves (of params) furthest from a 1/fsdp split: why a model misses the target."""
  rows = []
  for path, x in jax.tree_util.tree_leaves_with_path(state.params):
    ways = int(np.prod(sharding.fsdp_splits(x.shape, fsdp)))
    if ways < fsdp:
      rows.append((x.size * (1 / ways - 1 / fsdp), jax.tree_util.keystr(path), x.shape, ways))
  rows.sort(reverse=True)
  return '; '.join(f'{p} {tuple(s)} {w}-way' for _, p, s, w in rows[:top])


def state_table(models, sizes) -> None:
  """Replicated vs fsdp per-device state bytes (target: fsdp/replicated <= 1.1 / N)."""
  print('\n| model | res | state replicated (GiB) | ' +
        ' | '.join(f'fsdp={n} (GiB) | x N' for n in sizes) + ' |')
  print('|---|---|---|' + '---|---|' * len(sizes))
  for name, res in models:
    _, _, _, state = abstract_setup(name, res, make_config(name))
    full = state_bytes(state, 1)
    cells = []
    for n in sizes:
      b = state_bytes(state, n)
      cells.append(f'{b / GIB:.3f} | {b * n / full:.3f}')
    print(f'| {name} | {res} | {full / GIB:.3f} | ' + ' | '.join(cells) + ' |', flush=True)
    for n in sizes:
      print(f'  fsdp={n} furthest from 1/{n}: {worst_leaves(state, n) or "none"}', flush=True)


def compile_step(name, res, mode, per_device_batch):
  """XLA memory analysis (per device) of the train step for one mode and batch."""
  n = jax.device_count()
  fsdp = n if mode.startswith('fsdp') else 1
  mesh = sharding.make_mesh(n // fsdp, fsdp)
  remat = mode.split('+')[1] if '+' in mode else 'none'
  config = make_config(name, remat='block' if remat == 'remat' else remat)
  model, opt, schedule, state = abstract_setup(name, res, config)
  shardings = sharding.state_shardings(state, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  b = per_device_batch * n
  batch = {'image': jax.ShapeDtypeStruct((b, res, res, 3), jnp.bfloat16, sharding=batch_sharding),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding),
           'mask': jax.ShapeDtypeStruct((b,), jnp.float32, sharding=batch_sharding)}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          state, shardings)
  step = jax.jit(steps.make_train_step(model, opt, config, schedule),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
  t0 = time.perf_counter()
  m = step.lower(abstract, batch).compile().memory_analysis()
  return dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
              alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
              state=sharding.bytes_per_device(abstract), compile_s=time.perf_counter() - t0)


def compile_table(models, modes, batches) -> None:
  """Memory per device at two batches, and the largest batch per memory budget."""
  b1, b2 = batches
  print(f'\n{jax.device_count()} devices; per-device GiB at batch {b1} / {b2}; '
        'fits = largest per-device batch in ' + '/'.join(map(str, BUDGETS_GIB)) + ' GiB')
  print('| model | res | mode | state | args | temp @b1 | temp @b2 | peak @b1 | fits ' +
        '/'.join(map(str, BUDGETS_GIB)) + ' GiB | compile s |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for name, res in models:
    for mode in modes:
      m1, m2 = compile_step(name, res, mode, b1), compile_step(name, res, mode, b2)
      per_image = max((m2['temp'] - m1['temp']) / (b2 - b1), 1)
      fixed = m1['args'] + m1['out'] - m1['alias'] + m1['temp'] - per_image * b1
      fits = [max(int((g * GIB - fixed) // per_image), 0) for g in BUDGETS_GIB]
      peak = m1['args'] + m1['out'] - m1['alias'] + m1['temp']
      print(f'| {name} | {res} | {mode} | {m1["state"] / GIB:.2f} | {m1["args"] / GIB:.2f} | '
            f'{m1["temp"] / GIB:.2f} | {m2["temp"] / GIB:.2f} | {peak / GIB:.2f} | '
            f'{"/".join(map(str, fits))} | {m1["compile_s"] + m2["compile_s"]:.0f} |',
            flush=True)


def residuals_per_image(name, res, mode, policy='nothing'):
  """Per image: (bytes the forward saves for the backward, the largest remat region's own
  saved values = the working set its recomputation needs), from batches 1 and 2 (so that the
  weights the backward reads, the same buffers as the params, cancel out)."""
  config = make_config(name, mode)
  model, _, _, state = abstract_setup(name, res, config)

  def forward(params, stats, image):
    return model.apply({'params': params, 'batch_stats': stats}, image, train=True,
                       mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})[0]
  loss = lambda p, s, x: jnp.mean(remat_lib.rematerialize(forward, mode, policy)(p, s, x)
                                  .astype(jnp.float32))
  saved, work = [], []
  for b in (1, 2):
    args = (state.params, state.batch_stats, jax.ShapeDtypeStruct((b, res, res, 3),
                                                                  jnp.bfloat16))
    saved.append(residual_bytes(loss, *args))  # with respect to the params
    work.append(0 if mode == 'none' else max(_region_sizes(forward, mode, args)))
  return saved[1] - saved[0], work[1] - work[0]


def _region_sizes(forward, mode, args):
  """Saved-value bytes of each remat region (block: every block; stage: every stage) when
  differentiated without remat: what recomputing that region holds at once."""
  def tagged(*a):
    with remat_lib.nn.intercept_methods(remat_lib._block_tagger):
      return forward(*a)
  closed = jax.make_jaxpr(tagged)(*args)
  eqns = closed.jaxpr.eqns
  if mode == 'stage':
    ends = remat_lib._stage_ends(eqns)
  else:
    ends = [i for i, e in enumerate(eqns) if e.primitive.name == 'name'][:-1]
  sizes = []
  for piece_eqns, inputs, outputs in remat_lib._segments(closed.jaxpr, ends):
    piece = remat_lib.jax_core.ClosedJaxpr(closed.jaxpr.replace(
        constvars=[], invars=inputs, outvars=outputs, eqns=piece_eqns), [])
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in inputs]
    inexact = [jnp.issubdtype(a.dtype, jnp.inexact) for a in avals]

    def fn(diff, other, p=piece, inexact=inexact):
      d, o = iter(diff), iter(other)
      outs = remat_lib.jax_core.jaxpr_as_fun(p)(*[next(d) if f else next(o) for f in inexact])
      return sum(jnp.sum(y.astype(jnp.float32)) for y in outs
                 if jnp.issubdtype(y.dtype, jnp.inexact))
    sizes.append(residual_bytes(fn, [a for a, f in zip(avals, inexact) if f],
                                 [a for a, f in zip(avals, inexact) if not f]))
  return sizes


def residuals_table(models, fsdp_sizes=(1, 8)) -> None:
  """Residual bytes per image for none / block / stage remat and the batch they allow."""
  print('\nper image (bf16 compute): saved = what the forward keeps for the backward, work = '
        'the largest region recomputed at once; fits = largest per-device batch with (saved + '
        'work) per image + state + 2 x params (gradients, update) in ' +
        '/'.join(map(str, BUDGETS_GIB)) + ' GiB; replicated | fsdp=' +
        ','.join(map(str, fsdp_sizes[1:])))
  print('| model | res | remat | saved MiB | work MiB | x less | fits (replicated) | ' +
        ' | '.join(f'fits (fsdp={n})' for n in fsdp_sizes[1:]) + ' |')
  print('|---|---|---|---|---|---|---|' + '---|' * (len(fsdp_sizes) - 1))
  for name, res in models:
    state = abstract_setup(name, res, make_config(name))[3]
    base = None
    for mode in ('none', 'block', 'stage'):
      saved, work = residuals_per_image(name, res, mode)
      per_image = saved + work
      base = base or per_image
      cells = []
      for n in fsdp_sizes:
        fixed = state_bytes(state, n) + 2 * state_bytes(state.params, n)
        cells.append('/'.join(str(max(int((g * GIB - fixed) // per_image), 0))
                              for g in BUDGETS_GIB))
      print(f'| {name} | {res} | {mode} | {saved / 2**20:.0f} | {work / 2**20:.0f} | '
            f'{base / per_image:.1f} | ' +
            ' | '.join(cells) + ' |', flush=True)


def time_table(name='efficientnet_b0', res=96, batch=16, steps_=5) -> None:
  """Step time without remat and with block / stage remat, interleaved in one run (CPU, f32)."""
  from senet_jax.training.state import create_sharded_state
  mesh = sharding.make_mesh(-1, 1, jax.devices()[:1])
  rng = np.random.RandomState(0)
  data = {'image': jnp.asarray(rng.randn(batch, res, res, 3), jnp.float32),
          'label': jnp.asarray(rng.randint(0, 1000, batch), jnp.int32),
          'mask': jnp.ones((batch,), jnp.float32)}
  runs = {}
  for remat in ('none', 'block', 'stage'):
    config = make_config(name, remat)
    config.update(dict(dtype='float32'))
    model = create_model(name)
    schedule = optim.create_schedule(config, 1000, 100_000)
    opt = optim.create_optimizer(config, schedule)
    state, shard = create_sharded_state(model, opt, jax.random.PRNGKey(0), (1, res, res, 3),
                                        NamedSharding(mesh, P()))
    step = jax.jit(steps.make_train_step(model, opt, config, schedule), donate_argnums=(0,))
    state, _ = step(state, data)  # compile
    jax.block_until_ready(state)
    runs[remat] = [step, state, []]
  for _ in range(steps_):  # interleaved so that machine load affects both alike
    for remat, run in runs.items():
      t0 = time.perf_counter()
      run[1], _ = run[0](run[1], data)
      jax.block_until_ready(run[1])
      run[2].append(time.perf_counter() - t0)
  base = np.median(runs['none'][2])
  print(f'\n{name}@{res} batch {batch}, CPU float32, median of {steps_} interleaved steps: '
        f'no remat {base * 1e3:.0f} ms, ' + ', '.join(
            f'{r} remat {np.median(runs[r][2]) * 1e3:.0f} ms (x{np.median(runs[r][2]) / base:.2f})'
            for r in ('block', 'stage')))


def main():
  args = ARGS
  models = [(m.split('@')[0], int(m.split('@')[1])) for m in args.models.split(',') if m]
  tables = args.tables.split(',')
  if 'state' in tables:
    state_table(models, [int(n) for n in args.state_devices.split(',')])
  if 'compile' in tables:
    compile_table(models, args.modes.split(','), [int(b) for b in args.batches.split(',')])
  if 'residuals' in tables:
    residuals_table(models)
  if 'time' in tables:
    time_table()


if __name__ == '__main__':
  main()
