r"""What checkpoint integrity costs: save and restore times with and without the checks.

    python benchmarks/checkpoint_integrity.py [--rounds=5] [--out=benchmarks/results/x.json]

Two states: the quickstart model's train state (se_resnet18 on 32 px digits, ~5 MB) and a
synthetic ~100 MB state (200 float32 arrays). For each, rounds alternate a plain save/restore
(training/integrity.py's functions replaced by no-ops) with the checked one, in one process, and
the medians are compared. save_blocking = what the training loop waits for in `save()` (orbax
writes in the background; the checked save first digests every array and checks it is finite);
save_durable = until the step is committed and its file checksums written; restore = `restore()`
of that step (file checksums verified).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from senet_jax.training import checkpoint as ckpt_lib  # noqa: E402
from senet_jax.training import integrity  # noqa: E402


@contextlib.contextmanager
def checks_disabled():
  """integrity's save/restore hooks as no-ops: the cost of a checkpoint without checks."""
  saved = (integrity.inspect, integrity.seal_files, integrity.verify_files, integrity.verify)
  integrity.inspect = lambda tree: ({}, [])
  integrity.seal_files = lambda step_dir: None
  integrity.verify_files = lambda step_dir: False
  integrity.verify = lambda record, state, where, arrays=True: None
  try:
    yield
  finally:
    (integrity.inspect, integrity.seal_files, integrity.verify_files, integrity.verify) = saved


def quickstart_state():
  """The quickstart config's real train state (params, EMA, optimizer, batch stats)."""
  from configs import quickstart
  from senet_jax.models import builder
  from senet_jax.training import optim
  from senet_jax.training.state import create_sharded_state
  config = quickstart.get_config()
  model = builder.build_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                              conv_impl=config.conv_impl, model_kwargs=config.model_kwargs)
  schedule = optim.create_schedule(config, 100, 1000)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state, _ = create_sharded_state(model, optim.create_optimizer(config, schedule),
                                  jax.random.PRNGKey(0),
                                  (1, config.image_size, config.image_size, 3), device)
  return state


def synthetic_state(total_bytes=100 * 2**20, leaves=200):
  rng = np.random.default_rng(0)
  size = total_bytes // 4 // leaves
  return {f'layer{i:03d}': jax.device_put(rng.normal(size=(size,)).astype(np.float32))
          for i in range(leaves)}


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def time_once(state, directory: str, step: int) -> tuple[float, float, float]:
  """(the training loop's wait in save(), save until durable, restore) in seconds."""
  checkpointer = ckpt_lib.Checkpointer(directory, keep=2, keep_best=False)
  t0 = time.perf_counter()
  checkpointer.save(step, state, {'step': step})
  t1 = time.perf_counter()
  checkpointer.wait()
  checkpointer._join_sealing()  # noqa: SLF001 - the file checksums written too
  t2 = time.perf_counter()
  restored, _ = checkpointer.restore(step, abstract(state))
  jax.block_until_ready(restored)
  t3 = time.perf_counter()
  checkpointer.close()
  return t1 - t0, t2 - t0, t3 - t2


def measure(name: str, state, rounds: int) -> dict:
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  work = tempfile.mkdtemp(prefix='ckpt_bench_')
  times = {'plain': [], 'checked': []}
  try:
    for r in range(rounds + 1):  # round 0 warms up both (compiles the digest, orbax's pools)
      for mode in ('plain', 'checked'):
        directory = os.path.join(work, f'{mode}{r}')
        if mode == 'plain':
          with checks_disabled():
            result = time_once(state, directory, r + 1)
        else:
          result = time_once(state, directory, r + 1)
        if r:
          times[mode].append(result)
        shutil.rmtree(directory)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  row = {'state': name, 'megabytes': round(nbytes / 2**20, 1), 'leaves': len(jax.tree.leaves(state))}
  for i, what in enumerate(('save_blocking', 'save_durable', 'restore')):
    plain = statistics.median(t[i] for t in times['plain'])
    checked = statistics.median(t[i] for t in times['checked'])
    row.update({f'{what}_plain_s': round(plain, 4), f'{what}_checked_s': round(checked, 4),
                f'{what}_overhead': round(checked / plain - 1, 3)})
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  rows = [measure('quickstart se_resnet18', quickstart_state(), args.rounds),
          measure('synthetic 100 MB', synthetic_state(), args.rounds)]
  print('| state | MB | what | plain (s) | checked (s) | overhead |\n|---|---|---|---|---|---|')
  for r in rows:
    for what in ('save_blocking', 'save_durable', 'restore'):
      print(f"| {r['state']} | {r['megabytes']} | {what} | {r[what + '_plain_s']:.3f} | "
            f"{r[what + '_checked_s']:.3f} | {100 * r[what + '_overhead']:+.0f}% |")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'rounds': args.rounds, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
