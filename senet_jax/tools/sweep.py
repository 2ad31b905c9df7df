r"""Run, print or summarise a sweep: a config file with `get_sweep()` next to `get_config()`.

    python -m senet_jax.tools.sweep --config=configs/sweeps/se_reduction_ratio.py:quick \
        --workdir=DIR
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_gate.py \
        --workdir=DIR --print_commands
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_gate.py:quick \
        --workdir=DIR --summarize
    python -m senet_jax.tools.sweep --config=configs/sweeps/se_gate.py:quick \
        --workdir=DIR --seeds=0,1,2
    senet-sweep --config=configs/sweeps/se_gate.py:quick --workdir=DIR --config.num_epochs=2

Each point trains in DIR/<point name>, or with --seeds in DIR/<point name>/seed=<s> (resumable:
a killed run resumes from its checkpoint, a finished one is skipped), printing its progress and
time. --print_commands prints one `main.py` command per run for a cluster scheduler (absolute
paths and this Python: they work from any directory); --summarize writes DIR/summary.md and
DIR/summary.csv from every run's eval results: parameters, time, seeds, mean and spread of
top-1 over seeds, and whether the points differ by more than that spread.
`--config.FIELD=VALUE` (as main.py's) overrides a field of the sweep's base config for every
run (not a field the sweep varies). The trainer is `--trainer` (default: the package's
`senet_jax.training.trainer:train_and_evaluate`, the checkout's train.py).
"""
from __future__ import annotations

import ast
import csv
import glob
import importlib
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Any

from senet_jax.utils import cli, paths
from senet_jax.utils.names import suggest

DEFAULT_TRAINER = 'senet_jax.training.trainer:train_and_evaluate'
DONE_FILE = 'sweep_point_done.json'
COLUMNS = ['point', 'finished', 'runs', 'seeds', 'params', 'step', 'top1', 'top1_std',
           'top1_per_seed', 'top5', 'ema_top1', 'loss', 'seconds']


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
  path = paths.resolve_repo_path(path)  # configs/sweeps/... works from any directory
  if not os.path.isfile(path):
    raise ValueError(f'--config {path!r} does not exist')
  if paths.REPO_ROOT not in sys.path:  # a sweep file may `import configs` (the checkout)
    sys.path.insert(0, paths.REPO_ROOT)
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(): not a sweep config')
  config = module.get_config(variant) if variant else module.get_config()
  points = module.get_sweep(variant) if variant else module.get_sweep()
  return config, list(points), path, variant


def config_overrides(extra: list[str]) -> list[tuple[str, str]]:
  """[(dotted field, value text)] from `--config.FIELD=VALUE` / `--config.FIELD VALUE` arguments;
  ValueError for any other argument."""
  out, rest = [], list(extra)
  while rest:
    arg = rest.pop(0)
    if not arg.startswith('--config.'):
      raise ValueError(f'unrecognized argument {arg!r} (see --help)')
    key, eq, text = arg[len('--config.'):].partition('=')
    if not eq:
      if not rest:
        raise ValueError(f'{arg} needs a value: {arg}=VALUE')
      text = rest.pop(0)
    out.append((key, text))
  return out


def _parse_value(text: str, current: Any) -> Any:
  """A command-line value as main.py's flags read it: a Python literal where it parses (ints,
  floats, tuples, True/False), else the text itself."""
  if isinstance(current, bool) and text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: list[tuple[str, str]], points, path: str):
  """A copy of `config` with the `--config.FIELD=VALUE` overrides set; ValueError (one line)
  for an unknown field, a value of the wrong type or a field the sweep's points set."""
  config = config.copy_and_resolve_references()
  varied = {key for point in points for key in point}
  for key, text in overrides:
    if key in varied:
      raise ValueError(f'--config.{key}: the sweep {path} varies this field; its points set it')
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node.get(p) if hasattr(node, 'get') else None
    if node is None or not hasattr(node, 'keys') or leaf not in node:
      known = [k for k in (node.keys() if hasattr(node, 'keys') else [])]
      raise ValueError(f'--config.{key} is not a field of {path}{suggest(leaf, known)}')
    current = node[leaf]
    try:
      node[leaf] = _parse_value(text, current)
    except (TypeError, ValueError):
      raise ValueError(f'--config.{key}={text}: expected a {type(current).__name__}, as the '
                       f'config\'s {current!r}') from None
  return config


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


def command(path: str, variant: str, workdir: str, point: dict[str, Any],
            seed: int | None = None, overrides: list[str] = ()) -> str:
  """The main.py command line of one point (and seed), runnable from any directory (an
  installed package's: `python -m senet_jax.main`); `overrides` are --config.FIELD=VALUE."""
  spec = os.path.abspath(path) + (f':{variant}' if variant else '')
  if '://' not in workdir:  # leave bucket URLs as they are
    workdir = os.path.abspath(workdir)
  main_py = os.path.join(paths.REPO_ROOT, 'main.py')
  trainer = [main_py] if os.path.isfile(main_py) else ['-m', 'senet_jax.main']
  args = [sys.executable, *trainer, f'--config={spec}', f'--workdir={workdir}', *overrides]
  for key, value in sorted(point.items()):
    args.append(f'--config.{key}={value!r}' if isinstance(value, (tuple, list))
                else f'--config.{key}={value}')
  if seed is not None:
    args.append(f'--config.seed={seed}')
  return ' '.join(shlex.quote(a) for a in args)


def run_dir(workdir: str, name: str, seed: int | None) -> str:
  """Where one run trains: WORKDIR/<point>, or WORKDIR/<point>/seed=<s> with explicit seeds."""
  point_dir = os.path.join(workdir, name)
  return point_dir if seed is None else os.path.join(point_dir, f'seed={seed}')


def count_params(model_name: str, num_classes: int, model_kwargs, image_size: int) -> int:
  """Parameters of a registered model with these fields (shapes only, nothing is computed)."""
  import jax
  import numpy as np
  from senet_jax.models import create_model
  model = create_model(model_name, num_classes=num_classes, **model_kwargs)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


def run(config, points, workdir: str, seeds: list[int] | None = None,
        train_fn=None) -> list[str]:
  """Trains every unfinished point (x seed) in turn; returns the run directories it trained,
  relative to `workdir`. Prints each run's progress, result, time and the sweep's ETA.

  `train_fn(config, workdir)` trains one run (None: `load_trainer()`).
  """
  train_fn = train_fn or load_trainer()
  from senet_jax.training.progress import format_duration
  runs = [(point, seed) for point in points for seed in (seeds or [None])]
  ran, seconds = [], []
  for i, (point, seed) in enumerate(runs, start=1):
    name = point_name(point)
    directory = run_dir(workdir, name, seed)
    label = f'[sweep {i}/{len(runs)}] {name}' + ('' if seed is None else f' seed {seed}')
    if os.path.exists(os.path.join(directory, DONE_FILE)):
      print(f'{label}: finished earlier, skipped', flush=True)
      continue
    point_config = apply_point(config, point)
    if seed is not None:
      point_config.seed = seed
    print(f'{label}: training in {directory}', flush=True)
    t0 = time.perf_counter()
    results = train_fn(point_config, directory)
    seconds.append(time.perf_counter() - t0)
    params = count_params(point_config.model, point_config.num_classes,
                          point_config.model_kwargs, point_config.image_size)
    with open(os.path.join(directory, DONE_FILE), 'w') as f:
      json.dump({'point': point, 'seed': point_config.seed, 'results': results,
                 'seconds': seconds[-1], 'params': params}, f, indent=1, default=str)
    left = sum(1 for p, s in runs[i:]
               if not os.path.exists(os.path.join(run_dir(workdir, point_name(p), s), DONE_FILE)))
    eta = format_duration(left * sum(seconds) / len(seconds))
    runs_left = f'{left} run{"" if left == 1 else "s"} left'
    print(f'{label}: top-1 {100 * results.get("top1", float("nan")):.2f}% in '
          f'{format_duration(seconds[-1])}; {runs_left}, ETA {eta}', flush=True)
    ran.append(os.path.relpath(directory, workdir))
  return ran


# ---- Summaries: per point the parameters, time, seeds, mean and spread of top-1 over seeds,
# and whether the points differ by more than the seed-to-seed spread ------------------------

def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect_runs(point_dir: str) -> list[dict[str, Any]]:
  """Every run of one point: the point directory itself, or its seed=<s> subdirectories."""
  dirs = sorted(glob.glob(os.path.join(glob.escape(point_dir), 'seed=*')),
                key=lambda d: int(d.rsplit('=', 1)[1]) if d.rsplit('=', 1)[1].isdigit() else 0)
  runs = []
  for directory in dirs or [point_dir]:
    evals = _read_json(os.path.join(directory, 'eval_results.json'))
    done = _read_json(os.path.join(directory, DONE_FILE)) or {}
    runs.append({'latest': (evals or {}).get('latest', {}), 'finished': bool(done),
                 'seed': done.get('seed'), 'seconds': done.get('seconds'),
                 'params': done.get('params')})
  return runs


def _mean(values):
  values = [v for v in values if v is not None]
  return statistics.fmean(values) if values else None


def point_row(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
  """One summary row: means over the point's runs, the spread (sample std) of top-1."""
  latest = [r['latest'] for r in runs]
  top1 = [x['top1'] for x in latest if x.get('top1') is not None]
  return {
      'point': name, 'finished': all(r['finished'] for r in runs), 'runs': len(runs),
      'seeds': ' '.join(str(r['seed']) for r in runs if r['seed'] is not None),
      'params': next((r['params'] for r in runs if r['params']), None),
      'step': max((x['step'] for x in latest if 'step' in x), default=None),
      'top1': _mean(top1), 'top1_std': statistics.stdev(top1) if len(top1) > 1 else None,
      'top1_per_seed': ' '.join(f'{100 * v:.2f}' for v in top1),
      'top5': _mean(x.get('top5') for x in latest),
      'ema_top1': _mean(x.get('ema_top1') for x in latest),
      'loss': _mean(x.get('loss') for x in latest),
      'seconds': _mean(r['seconds'] for r in runs)}


def verdict(rows: list[dict[str, Any]]) -> str:
  """Whether the points' mean top-1 differ by more than twice the seed-to-seed spread."""
  done = [r for r in rows if r['top1'] is not None]
  if len(done) < 2:
    return 'Fewer than two points have results: nothing to compare.'
  best = max(done, key=lambda r: r['top1'])
  gap = 100 * (best['top1'] - min(r['top1'] for r in done))
  stds = [r['top1_std'] for r in done if r['top1_std'] is not None]
  if len(stds) < len(done):
    return (f'Points span {gap:.2f} pp of top-1 with one run for some points, so the '
            'seed-to-seed spread is unknown and differences of this size may be noise: rerun '
            'with --seeds=0,1,2.')
  spread = 100 * max(stds)
  if gap <= 2 * spread:
    return (f'All points are within the seed spread: their mean top-1 spans {gap:.2f} pp, '
            f'less than twice the largest seed-to-seed std ({spread:.2f} pp). This sweep does '
            'not separate them.')
  tied = [r['point'] for r in done
          if r is not best and 100 * (best['top1'] - r['top1']) <= 2 * spread]
  return (f'Best: {best["point"]} ({100 * best["top1"]:.2f}%); points span {gap:.2f} pp, more '
          f'than twice the largest seed-to-seed std ({spread:.2f} pp).' +
          (f' Within that spread of the best: {", ".join(tied)}.' if tied else ''))


def markdown(rows: list[dict[str, Any]]) -> str:
  """The summary table and the verdict as Markdown."""
  def pct(v):
    return '' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{100 * v:.2f}'

  def plain(v):
    return '' if v is None else (f'{v:,}' if isinstance(v, int) and not isinstance(v, bool)
                                 else str(v))
  lines = ['| point | params | seeds | top-1 (%) mean | std (pp) | top-1 per seed | top-5 (%) '
           '| EMA top-1 (%) | time per run (s) | step | finished |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    seconds = '' if r['seconds'] is None else f'{r["seconds"]:.0f}'
    lines.append(f'| {r["point"]} | {plain(r["params"])} | {r["seeds"] or "config"} | '
                 f'{pct(r["top1"])} | {pct(r["top1_std"])} | {r["top1_per_seed"]} | '
                 f'{pct(r["top5"])} | {pct(r["ema_top1"])} | {seconds} | {plain(r["step"])} | '
                 f'{r["finished"]} |')
  return '\n'.join(lines) + '\n\n' + verdict(rows) + '\n'


def summarize(points, workdir: str) -> list[dict[str, Any]]:
  """Per point: params, time, seeds, mean / spread of the final metrics over its runs
  (missing ones marked), written as summary.md (with a verdict) and summary.csv."""
  rows = [point_row(point_name(p), collect_runs(os.path.join(workdir, point_name(p))))
          for p in points]
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows([{c: r.get(c) for c in COLUMNS} for r in rows])
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(markdown(rows))
  return rows


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--config', required=True, help='sweep config file[:variant]')
  p.add_argument('--workdir', required=True)
  p.add_argument('--print_commands', action='store_true', help='print, do not run')
  p.add_argument('--summarize', action='store_true', help='only collect results')
  p.add_argument('--seeds', default='',
                 help='comma-separated seeds, one run of every point each (default: one run '
                      "with the config's seed); the summary then gives the spread over seeds")
  p.add_argument('--trainer', default=DEFAULT_TRAINER, help='module:function training a point')
  args, extra = p.parse_known_args(argv)
  try:
    args.overrides = config_overrides(extra)
  except ValueError as err:
    p.error(str(err).removesuffix(' (see --help)'))
  return cli.run(_main, args)


def _main(args) -> int:
  config, points, path, variant = load_sweep(args.config)
  config = apply_overrides(config, args.overrides, points, path)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()] or None
  if args.print_commands:
    flags = [f'--config.{key}={text}' for key, text in args.overrides]
    for point in points:
      for seed in seeds or [None]:
        print(command(path, variant, run_dir(args.workdir, point_name(point), seed), point,
                      seed, flags))
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  if not args.summarize:
    run(config, points, args.workdir, seeds, load_trainer(args.trainer))
  summarize(points, args.workdir)
  with open(os.path.join(args.workdir, 'summary.md')) as f:
    print(f.read())
  return 0


if __name__ == '__main__':
  sys.exit(main())
