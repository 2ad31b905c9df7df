r"""Run, print or summarise a sweep: a config file with `get_sweep()` next to `get_config()`.

    python -m senet_jax.sweep --config=configs/sweeps/se_reduction_ratio.py:quick --workdir=DIR
    python -m senet_jax.sweep --config=configs/sweeps/se_gate.py --workdir=DIR --print_commands
    python -m senet_jax.sweep --config=configs/sweeps/se_gate.py:quick --workdir=DIR --summarize

Each point trains in DIR/<point name> (resumable: a killed point resumes from its checkpoint,
a finished point is skipped). --print_commands prints one `main.py` command per point for a
cluster scheduler; --summarize writes DIR/summary.md and DIR/summary.csv from every point's
eval results. The trainer is `--trainer` (default: `train:train_and_evaluate`, the
repository's train.py, importable when run from the checkout); the package itself never imports
the repository's top-level modules.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import os
import shlex
import sys
from typing import Any

DONE_FILE = 'sweep_point_done.json'
DEFAULT_TRAINER = 'train:train_and_evaluate'


def load_trainer(spec: str = DEFAULT_TRAINER):
  """The function `module:function` that trains one config into a workdir."""
  module_name, _, function = spec.partition(':')
  if not module_name or not function:
    raise ValueError(f"--trainer={spec!r}: expected 'module:function'")
  if module_name == 'train' and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # `senet-sweep` from the checkout, like `python -m`
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'--trainer={spec!r}: cannot import {module_name!r} ({e}); run from the '
                     'repository root or pass --trainer=module:function') from e
  return getattr(module, function)


def load_sweep(config_arg: str) -> tuple[Any, list[dict[str, Any]], str, str]:
  """(config, points, config path, variant) from 'path.py' or 'path.py:variant'."""
  path, _, variant = config_arg.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'--config {path!r} does not exist')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(): not a sweep config')
  config = module.get_config(variant) if variant else module.get_config()
  points = module.get_sweep(variant) if variant else module.get_sweep()
  return config, list(points), path, variant


def point_name(point: dict[str, Any]) -> str:
  """A directory name for a point, e.g. 'se_reduction=8.0' or 'se_stages=2-3-4'."""
  def value(v):
    return '-'.join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
  return ','.join(f'{k.split(".")[-1]}={value(v)}' for k, v in sorted(point.items()))


def apply_point(config, point: dict[str, Any]):
  """A copy of `config` with the dotted fields of `point` set (unknown fields are errors)."""
  config = config.copy_and_resolve_references()
  for key, value in point.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f'sweep point sets unknown field config.{key}')
    node[leaf] = value
  return config


def command(path: str, variant: str, workdir: str, point: dict[str, Any]) -> str:
  """The main.py command line of one point."""
  spec = f'{path}:{variant}' if variant else path
  args = ['python', 'main.py', f'--config={spec}', f'--workdir={workdir}']
  for key, value in sorted(point.items()):
    args.append(f'--config.{key}={value!r}' if isinstance(value, (tuple, list))
                else f'--config.{key}={value}')
  return ' '.join(shlex.quote(a) for a in args)


def run(config, points, workdir: str, train_fn=None) -> list[str]:
  """Trains every unfinished point in turn; returns the names of the points it ran.

  `train_fn(config, workdir)` trains one point (None: `load_trainer()`).
  """
  train_fn = train_fn or load_trainer()
  ran = []
  for point in points:
    name = point_name(point)
    point_dir = os.path.join(workdir, name)
    if os.path.exists(os.path.join(point_dir, DONE_FILE)):
      print(f'[sweep] {name}: finished earlier, skipped')
      continue
    print(f'[sweep] {name}: training in {point_dir}')
    results = train_fn(apply_point(config, point), point_dir)
    with open(os.path.join(point_dir, DONE_FILE), 'w') as f:
      json.dump({'point': point, 'results': results}, f, indent=1, default=str)
    ran.append(name)
  return ran


def summarize(points, workdir: str) -> list[dict[str, Any]]:
  """Final metrics of every point (missing ones marked), written as summary.md / .csv."""
  rows = []
  for point in points:
    name = point_name(point)
    path = os.path.join(workdir, name, 'eval_results.json')
    row = {'point': name}
    if os.path.exists(path):
      with open(path) as f:
        latest = json.load(f)['latest']
      row.update({k: latest.get(k) for k in ('step', 'top1', 'top5', 'ema_top1', 'loss')})
    row['finished'] = os.path.exists(os.path.join(workdir, name, DONE_FILE))
    rows.append(row)
  columns = ['point', 'finished', 'step', 'top1', 'top5', 'ema_top1', 'loss']
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows([{c: r.get(c) for c in columns} for r in rows])
  fmt = lambda v: f'{100 * v:.2f}' if isinstance(v, float) else ('' if v is None else str(v))
  lines = ['| point | finished | step | top-1 (%) | top-5 (%) | EMA top-1 (%) |',
           '|---|---|---|---|---|---|']
  lines += [f"| {r['point']} | {r['finished']} | {fmt(r.get('step'))} | {fmt(r.get('top1'))} | "
            f"{fmt(r.get('top5'))} | {fmt(r.get('ema_top1'))} |" for r in rows]
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', required=True, help='sweep config file[:variant]')
  p.add_argument('--workdir', required=True)
  p.add_argument('--print_commands', action='store_true', help='print, do not run')
  p.add_argument('--summarize', action='store_true', help='only collect results')
  p.add_argument('--trainer', default=DEFAULT_TRAINER, help='module:function training a point')
  args = p.parse_args(argv)
  config, points, path, variant = load_sweep(args.config)
  if args.print_commands:
    for point in points:
      print(command(path, variant, os.path.join(args.workdir, point_name(point)), point))
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  if not args.summarize:
    run(config, points, args.workdir, load_trainer(args.trainer))
  summarize(points, args.workdir)
  with open(os.path.join(args.workdir, 'summary.md')) as f:
    print(f.read())
  return 0


if __name__ == '__main__':
  sys.exit(main())
