r"""The SE paper's ablations on Fashion-MNIST: run them, store per-run CSVs, regenerate the table.

    python benchmarks/ablation_table.py --run --workdir=workdir/fashion_ablations --seeds=0,1,2
    python benchmarks/ablation_table.py     # only the table, from benchmarks/results/*.csv

--run trains every point of every ablation of configs/sweeps/fashion_mnist.py with every seed
(through senet_jax.tools.sweep: resumable, finished runs skipped), then writes one CSV per ablation,
benchmarks/results/fashion_mnist_<ablation>.csv, one row per run (seed): its final eval metrics,
parameters and wall time. The table (mean +- std of top-1 over seeds per point, next to the SE
paper's ImageNet ordering) is computed from those CSVs alone, with the sweep summaries' own
arithmetic (senet_jax.tools.sweep.point_row / verdict), printed, and written into docs/evidence.md
between its table markers; one row per ablation (`summary`) goes between README.md's summary
markers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from senet_jax.tools import sweep  # noqa: E402

SWEEP_CONFIG = os.path.join(ROOT, 'configs', 'sweeps', 'fashion_mnist.py')
RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
DOC = os.path.join(ROOT, 'docs', 'evidence.md')
PREFIX = 'fashion_mnist_'
MARKERS = ('<!-- ablation-table:start -->', '<!-- ablation-table:end -->')
# The README's compact form: one row per ablation (the full table stays in docs/evidence.md).
README = os.path.join(ROOT, 'README.md')
SUMMARY_MARKERS = ('<!-- ablation-summary:start -->', '<!-- ablation-summary:end -->')
COLUMNS = ['ablation', 'point', 'seed', 'finished', 'params', 'step', 'top1', 'top5',
           'ema_top1', 'loss', 'seconds']
METRICS = ('step', 'top1', 'top5', 'ema_top1', 'loss')

# The SE paper (Hu et al., SE-ResNet-50 on ImageNet; /work/shared/reference/architectures.md):
# its finding per ablation, the points it finds best (or tied for best) and worst, and the
# top-1 errors it prints where the reference quotes them (the conference tables).
PAPER = {
    'se': dict(order='SE > no SE', best={'se=True'}, worst={'se=False'},
               err={'se=True': 23.29, 'se=False': 24.80}),
    'se_reduction': dict(
        order='r = 4, 8, 16 within 0.1 pp (r = 16 the trade-off); r = 32 worse; r = 2 not in '
              'the conference table', best={'se_reduction=4.0', 'se_reduction=8.0',
                                           'se_reduction=16.0'}, worst=set(),
        err={'se_reduction=4.0': 23.21, 'se_reduction=8.0': 23.19, 'se_reduction=16.0': 23.29,
             'se_reduction=32.0': 23.40}),
    'se_squeeze': dict(order='avg > max; NoSqueeze worse than SE', best={'se_squeeze=avg'},
                       worst=set(), err={}),
    'se_gate': dict(order='sigmoid > tanh > ReLU', best={'se_gate=sigmoid'},
                    worst={'se_gate=relu'}, err={}),
    'se_stages': dict(order='every stage helps; all stages best', best={'se_stages=2-3-4'},
                      worst=set(), err={}),
    'se_position': dict(
        order='standard, PRE, Identity and after the 3x3 comparable; POST worse',
        best={'se_position=standard', 'se_position=pre', 'se_position=identity',
              'se_position=after_3x3'}, worst={'se_position=post'}, err={}),
}


def run_rows(ablation: str, points, workdir: str) -> list[dict]:
  """One CSV row per run of every point, read from the sweep's run directories."""
  rows = []
  for point in points:
    name = sweep.point_name(point)
    for run in sweep.collect_runs(os.path.join(workdir, name)):
      rows.append({'ablation': ablation, 'point': name, 'seed': run['seed'],
                   'finished': run['finished'], 'params': run['params'],
                   'seconds': run['seconds'], **{m: run['latest'].get(m) for m in METRICS}})
  return rows


def write_csv(path: str, rows: list[dict]) -> None:
  """Writes the rows (COLUMNS; missing values empty), replacing the file."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows([{c: r.get(c) for c in COLUMNS} for r in rows])


def read_csv(path: str) -> list[dict]:
  """The rows of a results CSV, typed back (empty cells -> None)."""
  def num(value, kind):
    return None if value in ('', None) else kind(value)
  with open(path, newline='') as f:
    return [{'ablation': r['ablation'], 'point': r['point'], 'seed': num(r['seed'], int),
             'finished': r['finished'] == 'True', 'params': num(r['params'], int),
             'step': num(r['step'], int), 'seconds': num(r['seconds'], float),
             **{m: num(r[m], float) for m in METRICS if m != 'step'}}
            for r in csv.DictReader(f)]


def point_rows(rows: list[dict]) -> list[dict]:
  """Per point, in CSV order: the sweep summary's row (mean, std over seeds, params, time)."""
  by_point: dict[str, list[dict]] = {}
  for r in rows:
    latest = {m: r[m] for m in METRICS if r[m] is not None}
    by_point.setdefault(r['point'], []).append(
        {'latest': latest, 'finished': r['finished'], 'seed': r['seed'],
         'seconds': r['seconds'], 'params': r['params']})
  return [sweep.point_row(name, runs) for name, runs in by_point.items()]


def agreement(ablation: str, points: list[dict]) -> str:
  """'agrees', 'disagrees' or 'not separated': our best (and worst) point against the paper's,
  counted only when the points differ by more than twice the largest seed-to-seed std."""
  done = [p for p in points if p['top1'] is not None]
  stds = [p['top1_std'] for p in done]
  if len(done) < 2 or None in stds:
    return 'not separated (fewer than two seeds)'
  best = max(done, key=lambda p: p['top1'])
  worst = min(done, key=lambda p: p['top1'])
  if best['top1'] - worst['top1'] <= 2 * max(stds):
    return 'not separated'
  paper = PAPER[ablation]
  ok = best['point'] in paper['best'] and (not paper['worst'] or worst['point'] in paper['worst'])
  return 'agrees' if ok else 'disagrees'


def table(results: dict[str, list[dict]]) -> str:
  """The Markdown table of every ablation's CSV rows (dict ablation -> rows), with verdicts."""
  def pct(v):
    return '' if v is None else f'{100 * v:.2f}'
  lines = ['| ablation | point | params | top-1 (%) mean ± std | seeds | s / run '
           '| paper: ImageNet top-1 err (%) |', '|---|---|---|---|---|---|---|']
  notes = []
  for ablation, rows in results.items():
    points = point_rows(rows)
    paper = PAPER.get(ablation, dict(order='', err={}))
    for p in points:
      spread = '' if p['top1_std'] is None else f' ± {pct(p["top1_std"])}'
      seconds = '' if p['seconds'] is None else f'{p["seconds"]:.0f}'
      params = '' if p['params'] is None else f'{p["params"]:,}'
      err = paper['err'].get(p['point'])
      err = '' if err is None else f'{err:.2f}'
      lines.append(f'| {ablation} | {p["point"]} | {params} | {pct(p["top1"])}{spread} | '
                   f'{len(p["seeds"].split())} | {seconds} | {err} |')
    verdict = agreement(ablation, points) if ablation in PAPER else 'no paper ordering'
    notes.append(f'- **{ablation}**: paper: {paper["order"]}. Here: {verdict}. '
                 f'{sweep.verdict(points)}')
  return '\n'.join(lines) + '\n\n' + '\n'.join(notes) + '\n'


def _short(point: str) -> str:
  """'se_gate=sigmoid' -> 'sigmoid', 'se_reduction=4.0' -> '4' (the README's narrow column)."""
  value = point.split('=', 1)[-1]
  return value[:-2] if value.endswith('.0') else value


def summary(results: dict[str, list[dict]]) -> str:
  """One Markdown row per ablation: each point's mean ± std top-1 (best first), the paper's
  finding and the verdict of `agreement` (the README's form of `table`)."""
  lines = ['| ablation | top-1 %, mean ± std over seeds (best first) | paper (ImageNet) | here |',
           '|---|---|---|---|']
  for ablation, rows in results.items():
    points = sorted((p for p in point_rows(rows) if p['top1'] is not None),
                    key=lambda p: -p['top1'])
    cells = ', '.join(
        f'{_short(p["point"])} {100 * p["top1"]:.2f}'
        + ('' if p['top1_std'] is None else f' ± {100 * p["top1_std"]:.2f}') for p in points)
    paper = PAPER.get(ablation, dict(order=''))
    verdict = agreement(ablation, points) if ablation in PAPER else 'no paper ordering'
    lines.append(f'| {ablation} | {cells} | {paper["order"]} | {verdict} |')
  return '\n'.join(lines) + '\n'


def load_results(results_dir: str = RESULTS_DIR) -> dict[str, list[dict]]:
  """Every fashion_mnist_<ablation>.csv in `results_dir`, in the sweep config's order."""
  names = os.listdir(results_dir) if os.path.isdir(results_dir) else []
  found = {f[len(PREFIX):-4]: os.path.join(results_dir, f) for f in names
           if f.startswith(PREFIX) and f.endswith('.csv')}
  order = [a for a in PAPER if a in found] + sorted(set(found) - set(PAPER))
  return {a: read_csv(found[a]) for a in order}


def update_doc(text: str, doc: str = DOC, markers: tuple[str, str] = MARKERS) -> bool:
  """Replaces the text between the `markers` of `doc`; False when it has no markers."""
  with open(doc) as f:
    content = f.read()
  start, end = content.find(markers[0]), content.find(markers[1])
  if start < 0 or end < start:
    return False
  content = content[:start + len(markers[0])] + '\n' + text + content[end:]
  with open(doc, 'w') as f:
    f.write(content)
  return True


# What a finished run leaves that the table reads (the checkpoints are not needed to reuse it).
RESULT_FILES = ('eval_results.json', sweep.DONE_FILE)


def _run_key(config, point: dict, seed: int) -> str:
  """The run's whole config as canonical JSON: two points with equal keys train the same run."""
  run_config = sweep.apply_point(config, point)
  run_config.seed = seed
  return json.dumps(run_config.to_dict(), sort_keys=True, default=str)


def reuse_identical_runs(ablations, workdir: str, seeds) -> list[str]:
  """Copies the results of a finished run into every other point x seed with the same config.

  Every ablation contains the base network once (se=True, se_gate=sigmoid, r = 4, ...): the
  same config and seed train bitwise the same run, so it is trained once and its results are
  shared (the copy's done file names its source). Returns the directories filled in.
  """
  finished, wanted = {}, []
  for ablation in ablations:
    config, points, _, _ = sweep.load_sweep(f'{SWEEP_CONFIG}:{ablation}')
    for point in points:
      for seed in seeds:
        key = _run_key(config, point, seed)
        directory = sweep.run_dir(os.path.join(workdir, ablation), sweep.point_name(point), seed)
        if os.path.exists(os.path.join(directory, sweep.DONE_FILE)):
          finished.setdefault(key, directory)
        else:
          wanted.append((key, directory))
  filled = []
  for key, directory in wanted:
    source = finished.get(key)
    if source is None:
      continue
    os.makedirs(directory, exist_ok=True)
    for name in RESULT_FILES:
      if os.path.exists(os.path.join(source, name)):
        shutil.copyfile(os.path.join(source, name), os.path.join(directory, name))
    with open(os.path.join(directory, sweep.DONE_FILE)) as f:
      done = json.load(f)
    done['same_run_as'] = os.path.relpath(source, workdir)
    with open(os.path.join(directory, sweep.DONE_FILE), 'w') as f:
      json.dump(done, f, indent=1)
    filled.append(directory)
  return filled


def run_ablations(ablations, workdir: str, seeds, results_dir: str = RESULTS_DIR,
                  trainer: str = sweep.DEFAULT_TRAINER) -> None:
  """Trains every point x seed of each ablation in WORKDIR/<ablation>, then writes its CSV
  (a run whose config another ablation already trained is copied, not trained again)."""
  for ablation in ablations:
    config, points, _, _ = sweep.load_sweep(f'{SWEEP_CONFIG}:{ablation}')
    directory = os.path.join(workdir, ablation)
    for copied in reuse_identical_runs(ablations, workdir, seeds):
      print(f'{os.path.relpath(copied, workdir)}: the same run as one already trained; '
            'results copied', flush=True)
    sweep.run(config, points, directory, seeds, sweep.load_trainer(trainer))
    sweep.summarize(points, directory)
    write_csv(os.path.join(results_dir, f'{PREFIX}{ablation}.csv'),
              run_rows(ablation, points, directory))


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--run', action='store_true', help='train the sweeps first (needs --workdir)')
  p.add_argument('--workdir', help='sweep directory: WORKDIR/<ablation>/<point>/seed=<s>')
  p.add_argument('--seeds', default='0,1,2', help='comma-separated seeds of every point')
  p.add_argument('--ablations', default=','.join(PAPER), help='comma-separated subset')
  p.add_argument('--results_dir', default=RESULTS_DIR)
  p.add_argument('--doc', default=DOC, help='Markdown file whose table markers get the table')
  p.add_argument('--readme', default=README,
                 help="Markdown file whose summary markers get one row per ablation ('' = none)")
  args = p.parse_args(argv)
  ablations = [a for a in args.ablations.split(',') if a]
  unknown = sorted(set(ablations) - set(PAPER))
  if unknown:
    print(f'error: --ablations: unknown {unknown}; expected some of {list(PAPER)}',
          file=sys.stderr)
    return 2
  if args.run:
    if not args.workdir:
      print('error: --run needs --workdir', file=sys.stderr)
      return 2
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    run_ablations(ablations, args.workdir, seeds, args.results_dir)
  results = load_results(args.results_dir)
  if not results:
    print(f'error: no {PREFIX}*.csv in {args.results_dir}: run with --run first',
          file=sys.stderr)
    return 2
  text = table(results)
  print(text)
  for doc, content, markers in ((args.doc, text, MARKERS),
                                (args.readme, summary(results), SUMMARY_MARKERS)):
    if doc and os.path.exists(doc) and not update_doc(content, doc, markers):
      print(f'note: {doc} has no {markers[0]} ... {markers[1]} markers; not updated',
            file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
