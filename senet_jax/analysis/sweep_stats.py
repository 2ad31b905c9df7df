"""Sweep summaries: per point the parameters, time, seeds, mean and spread of top-1 over seeds,
and whether the points differ by more than the seed-to-seed spread."""
from __future__ import annotations

import glob
import json
import math
import os
import statistics
from typing import Any

DONE_FILE = 'sweep_point_done.json'
COLUMNS = ['point', 'finished', 'runs', 'seeds', 'params', 'step', 'top1', 'top1_std',
           'top1_per_seed', 'top5', 'ema_top1', 'loss', 'seconds']


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
