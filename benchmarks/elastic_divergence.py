r"""How far training on several devices drifts from 1 device, against float32 reassociation alone.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/elastic_divergence.py \
        [--steps=300] [--data_dir=DIR] [--out=benchmarks/results/elastic_divergence.json]

The quickstart config (SE-ResNet-18, 32 px digits, batch 64; main.py's random streams), in one
4-device process, trains `steps` steps:
  one        1 device: the reference
  permuted1  1 device, each batch in a fixed shuffled order (seed 1; permuted2: seed 2): the same
  permuted2  examples, the same math: only the float32 summation order differs from `one`
  mesh22     a 2x2 mesh (data 2 x fsdp 2)
  elastic    2x2 for the first third of the steps, then on 1x2, then on 1x1 (the state moved
             into the new shardings, as a restore does)
Reported: whether every run read the same batches; per early step, each run's largest
relative difference from `one`; at the end, the largest BatchNorm running-variance difference
from `one`, the global relative difference of the params and test top-1 (raw and EMA weights).
And the mechanism: at the first step where mesh22's params part from one's by more than 1e-6,
that step is retaken on 1 device from both runs' previous states: how many stem max-pool
winners differ, and how much conv1's and fc's updates differ.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import senet_jax  # noqa: E402,F401  (main.py's XLA:CPU flags)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import train  # noqa: E402
from configs import quickstart  # noqa: E402
from senet_jax.data import digits, pipeline, preprocess  # noqa: E402
from senet_jax.ops import pooling  # noqa: E402
from senet_jax.training import optim, sharding, steps  # noqa: E402
from senet_jax.training.state import create_sharded_state  # noqa: E402

EARLY = 20  # steps whose states are kept for the per-step table and the mechanism


def setup(data_dir):
  """Config, train source, model, optimizer and the (unjitted) train step."""
  config = quickstart.get_config()
  config.data_dir = data_dir
  source = pipeline.open_source(config.dataset, config.train_split, data_dir)
  steps_per_epoch, total = train.training_length(config, len(source))
  model = train.build_model(config)
  schedule = optim.create_schedule(config, steps_per_epoch, total)
  opt = optim.create_optimizer(config, schedule)
  return config, source, model, opt, steps.make_train_step(model, opt, config, schedule)


def run(setup_, plan, permute=None):
  """plan: [(steps, devices, (mesh_data, mesh_fsdp))]. Returns (batch digests, early states,
  final state)."""
  config, source, model, opt, step_fn = setup_
  batches = pipeline.TrainIterator(config, source, device_count=4)
  state, digests, early = None, [], []
  for n, devices, shape in plan:
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:devices])
    data = sharding.batch_sharding(mesh)
    if state is None:
      state, shardings = create_sharded_state(
          model, opt, jax.random.PRNGKey(config.seed), (1, 32, 32, 3),
          lambda s: sharding.state_shardings(s, mesh))
    else:
      shardings = sharding.state_shardings(state, mesh)
      state = jax.device_put(jax.device_get(state), shardings)
    step = jax.jit(step_fn, in_shardings=(shardings, data),
                   out_shardings=(shardings, NamedSharding(mesh, P())))
    for _ in range(n):
      batch = next(batches)
      digests.append(hashlib.sha256(batch['image'].tobytes() + batch['label'].tobytes())
                     .hexdigest())
      if permute is not None:
        batch = {k: v[permute] for k, v in batch.items()}
      state, _ = step(state, jax.device_put(batch, data))
      if len(early) < EARLY:
        early.append(jax.device_get(state))
  return digests, early, jax.device_get(state)


def max_rel(a, b) -> float:
  """Largest |a - b| / max |b| over the float leaves."""
  return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if y.size)


def global_rel(a, b) -> float:
  """||a - b|| / ||b|| over all leaves together."""
  num = sum(float(np.sum((np.float64(x) - y) ** 2)) for x, y in zip(jax.tree.leaves(a),
                                                                       jax.tree.leaves(b)))
  return float(np.sqrt(num / sum(float(np.sum(np.float64(y) ** 2)) for y in jax.tree.leaves(b))))


def top1(model, config, params, stats) -> float:
  """Test-split top-1."""
  source = pipeline.open_source(config.dataset, config.eval_split, config.data_dir)
  prep = preprocess.Preprocessing.from_config(config)
  logits = jax.jit(lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=False))
  right = total = 0.0
  for batch in pipeline.eval_iterator(source, prep, config.eval_batch_size, config.num_classes):
    pred = np.argmax(np.asarray(logits(params, stats, batch['image'])), -1)
    right += float(np.sum((pred == batch['label']) * batch['mask']))
    total += float(np.sum(batch['mask']))
  return right / total


def mechanism(setup_, before_one, before_mesh, k):
  """Step k retaken on 1 device from both runs' states after step k - 1."""
  config, source, model, _, step_fn = setup_
  batch = next(pipeline.TrainIterator(config, source, start_step=k - 1))

  def winners(state):
    _, inter = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                           batch['image'], train=True, mutable=['batch_stats', 'intermediates'],
                           capture_intermediates=lambda m, _: m.scope.path == ('bn1',))
    stem = jax.nn.relu(inter['intermediates']['bn1']['__call__'][0])
    return np.asarray(pooling._max_pool_fwd(stem, 3, 2, ((1, 1), (1, 1)), None)[1])

  flips = winners(before_one) != winners(before_mesh)
  step = jax.jit(step_fn)
  after_one, after_mesh = step(before_one, batch)[0], step(before_mesh, batch)[0]
  update = {}
  for name in ('conv1', 'fc'):
    d1 = after_one.params[name]['kernel'] - before_one.params[name]['kernel']
    d2 = after_mesh.params[name]['kernel'] - before_mesh.params[name]['kernel']
    update[name] = float(np.linalg.norm(d1 - d2) / np.linalg.norm(d1))
  return {'step': k, 'state_rel_before': global_rel(before_mesh.params, before_one.params),
          'maxpool_winners_differing': int(flips.sum()), 'maxpool_winners': int(flips.size),
          'update_rel_diff': update}


def main():
  """Runs the five trainings and prints / writes the comparison as JSON."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  assert jax.device_count() == 4, 'run with XLA_FLAGS=--xla_force_host_platform_device_count=4'
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='digits_')
  digits.build(data_dir, 32)
  setup_ = setup(data_dir)
  n, third = args.steps, args.steps // 3
  plans = {'one': ([(n, 1, (1, 1))], None),
           'permuted1': ([(n, 1, (1, 1))], np.random.RandomState(1).permutation(64)),
           'permuted2': ([(n, 1, (1, 1))], np.random.RandomState(2).permutation(64)),
           'mesh22': ([(n, 4, (2, 2))], None),
           'elastic': ([(third, 4, (2, 2)), (third, 2, (1, 2)), (n - 2 * third, 1, (1, 1))],
                       None)}
  runs = {name: run(setup_, plan, perm) for name, (plan, perm) in plans.items()}
  ref_digests, ref_early, ref = runs['one']
  config, model = setup_[0], setup_[2]
  report = {'steps': n, 'same_batches': {k: r[0] == ref_digests for k, r in runs.items()},
            'early_max_rel_params': {}, 'final': {}}
  for name, (_, early, final) in runs.items():
    report['early_max_rel_params'][name] = [f'{max_rel(s.params, r.params):.1e}'
                                            for s, r in zip(early, ref_early)]
    var = lambda t: [x for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
                     if 'var' in jax.tree_util.keystr(p)]
    report['final'][name] = {
        'top1': top1(model, config, final.params, final.batch_stats),
        'ema_top1': top1(model, config, final.ema_params, final.ema_batch_stats),
        'bn_var_max_abs_diff': max(float(np.max(np.abs(x - y)))
                                   for x, y in zip(var(final.batch_stats), var(ref.batch_stats))),
        'bn_var_max': max(float(np.max(y)) for y in var(ref.batch_stats)),
        'params_global_rel': global_rel(final.params, ref.params)}
  mesh_early = runs['mesh22'][1]
  parted = [i for i, (s, r) in enumerate(zip(mesh_early, ref_early))
            if global_rel(s.params, r.params) > 1e-6]
  if parted and parted[0] > 0:
    i = parted[0]
    report['mechanism'] = mechanism(setup_, ref_early[i - 1], mesh_early[i - 1], i + 1)
  text = json.dumps(report, indent=1)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
