r"""A library user's own script vs the project's benchmark path: same model, same step.

    python benchmarks/plain_import.py                      # efficientnet_b0, 224 px, batch 16
    python benchmarks/plain_import.py --model=se_resnext50_32x4d --rounds=3

`USER_SCRIPT` is what a timm user writes: `import senet_jax`, `create_model`, their own
`jax.jit` training step (no main.py, no senet_jax helpers beyond the model), with a fresh
dropout / stochastic-depth key per step as a training loop has (a constant key would let XLA
fold the random masks into constants and time less work). It runs from a
temporary directory outside the checkout, with the repository on PYTHONPATH only (as after
`pip install`), and started with no allocator or XLA_FLAGS of its own, twice: as `python my_train.py` (the plain
import: since round 3 it never restarts the process, so glibc malloc) and as
`python -m senet_jax.run my_train.py` (the documented opt-in: the fast allocator). The
project's path is `benchmarks/train_step.py --no_torch` (what `make bench` times). The three
alternate, each in a fresh process, `--rounds` times; the script prints per path the median
images/s and compile time, and the ratios to the project path (1.00 = the same speed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_SCRIPT = r'''
import json, sys, time
import senet_jax  # before the first JAX computation (sets the XLA:CPU flags)
import jax, jax.numpy as jnp, numpy as np, optax
from senet_jax.models import create_model

name, res, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = create_model(name)
x = jnp.asarray(np.random.RandomState(0).randn(batch, res, res, 3).astype(np.float32))
y = jnp.asarray(np.random.RandomState(1).randint(0, 1000, batch))
variables = jax.jit(model.init)(jax.random.key(0), x[:1])
params, stats = variables['params'], variables['batch_stats']
opt = optax.sgd(0.01, momentum=0.9)
opt_state = opt.init(params)

@jax.jit
def train_step(params, stats, opt_state, x, y, key):
  def loss_fn(p):
    logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                              mutable=['batch_stats'], rngs={'dropout': key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), new['batch_stats'], opt_state, loss

t0 = time.perf_counter()
key = jax.random.key(1)
compiled = train_step.lower(params, stats, opt_state, x, y, key).compile()
compile_s = time.perf_counter() - t0
times = []
for i in range(steps + 2):  # two warm-up steps
  t0 = time.perf_counter()
  params, stats, opt_state, loss = compiled(params, stats, opt_state, x, y,
                                            jax.random.fold_in(key, i))
  loss.block_until_ready()
  times.append(time.perf_counter() - t0)
print(json.dumps({'img_s': batch / sorted(times[2:])[len(times[2:]) // 2],
                  'compile_s': compile_s}))
'''


def run_user_script(script: str, cwd: str, args, opt_in: bool = False) -> dict:
  """The user's script in a fresh process, started as a user would start it (`opt_in`: under
  `python -m senet_jax.run`)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'SENET_NO_JEMALLOC', 'MALLOC_CONF', 'MIMALLOC_PURGE_DELAY',
                      'XLA_FLAGS')}
  env['PYTHONPATH'] = ROOT
  launcher = ['-m', 'senet_jax.run'] if opt_in else []
  out = subprocess.run([sys.executable, *launcher, script, args.model, str(args.res), str(args.batch),
                        str(args.steps)], cwd=cwd, env=env, capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def run_project_path(args) -> dict:
  """`benchmarks/train_step.py --no_torch` for the same case (the `make bench` path)."""
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'train_step.py'),
                    '--no_torch', '--mode=train', f'--models={args.model}',
                    f'--shapes={args.res}x{args.batch}', f'--steps={args.steps}', '--warmup=2',
                    f'--json={out.name}'], check=True, stdout=subprocess.DEVNULL)
    with open(out.name) as f:
      row = json.load(f)['rows'][0]
  return {'img_s': row['senet_jax_img_s'], 'compile_s': row['jax_compile_s']}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--model', default='efficientnet_b0')
  p.add_argument('--res', type=int, default=224)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=5, help='timed steps per process')
  p.add_argument('--rounds', type=int, default=3, help='processes per path, alternating')
  args = p.parse_args(argv)
  results = {'plain import': [], 'senet_jax.run': [], 'project path': []}
  with tempfile.TemporaryDirectory() as cwd:
    script = os.path.join(cwd, 'my_train.py')
    with open(script, 'w') as f:
      f.write(USER_SCRIPT)
    for _ in range(args.rounds):
      results['plain import'].append(run_user_script(script, cwd, args))
      results['senet_jax.run'].append(run_user_script(script, cwd, args, opt_in=True))
      results['project path'].append(run_project_path(args))
      print({k: v[-1] for k, v in results.items()}, flush=True)
  med = {k: {m: statistics.median(r[m] for r in v) for m in ('img_s', 'compile_s')}
         for k, v in results.items()}
  print(f'\n{args.model} training step {args.res}x{args.batch}, median of {args.rounds} '
        f'processes per path:')
  for k, v in med.items():
    print(f"  {k:13} {v['img_s']:8.1f} img/s  compile {v['compile_s']:5.1f} s  "
          f"ratio to the project path {v['img_s'] / med['project path']['img_s']:.2f}")


if __name__ == '__main__':
  main()
