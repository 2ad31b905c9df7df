r"""`python -m senet_jax.tools.evaluate`: evaluate weights into a results CSV (timm's validate.py).

    python -m senet_jax.tools.evaluate --checkpoint=/tmp/evals_qs --resolutions=32,40,48 \
        --crops=0.875,1.0 --output=results.csv
    python -m senet_jax.tools.evaluate --checkpoint=/ckpt/se_resnet50 \
        --evals=imagenet,real,v2,a,r,sketch --data_dir=/data/tfds --resolutions=224,256,288 --flip

`--checkpoint`: training workdirs or converter outputs (comma separated), each with its own
preprocessing; or `--model=NAME` for randomly initialised weights (speed / size columns only).
Exit status 2 for bad flags / datasets, 4 for a missing or unreadable checkpoint (the tools'
convention: senet_jax.utils.cli).
`--evals`: 'main' (the checkpoint's own dataset and eval split) and shipped evaluators
(senet_jax.evaluation.SHIPPED). One row per (weights, evaluator, resolution, crop) with timm's
results-CSV columns (model, img_size, top1, top1_err, top5, top5_err, param_count [millions],
crop_pct, interpolation; accuracies in %) so the two tables join on them, then ours: weights,
evaluator, dataset, split, flip_tta, nll, ece (%, 15 bins), num_examples, gmacs,
infer_samples_per_sec (the compiled eval step on one resident batch, as timm's benchmark
times the model), best (1 on the best
top-1 (resolution, crop) of each weights x evaluator). Several processes (main.py's
--coordinator_address / --num_processes / --process_id, or --distributed) shard every split
exactly as training does; process 0 writes the CSV.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys

from senet_jax.utils import cli

COLUMNS = ('model', 'img_size', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count',
           'crop_pct', 'interpolation', 'weights', 'evaluator', 'dataset', 'split', 'flip_tta',
           'nll', 'ece', 'num_examples', 'gmacs', 'infer_samples_per_sec', 'best')
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass
class Weights:
  """Weights to evaluate: a model, its variables and its own eval preprocessing."""
  name: str
  model_name: str
  model: object
  variables: dict
  num_classes: int
  prep: object
  config: dict


def load_weights(checkpoint: str = '', model_name: str = '', num_classes: int = 1000,
                 image_size: int = 0) -> Weights:
  """From a checkpoint directory, or a registered model name with random weights."""
  import jax
  import jax.numpy as jnp
  from senet_jax.evaluation import Preprocessing
  if checkpoint:
    from senet_jax import loading
    loaded = loading.load(checkpoint)
    return Weights(checkpoint, loaded.name, loaded.model, loaded.variables, loaded.num_classes,
                   loaded.preprocessing, loaded.config)
  from senet_jax.models import create_model, model_info
  size = image_size or model_info(model_name).resolution
  model = create_model(model_name, num_classes=num_classes, dtype=jnp.float32)
  variables = jax.jit(model.init, static_argnames='train')(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  prep = Preprocessing(size, -1.0, 'bicubic', IMAGENET_MEAN, IMAGENET_STD)
  return Weights(f'{model_name} (random init)', model_name, model, dict(variables), num_classes,
                 prep, {})


def eval_specs(names: list[str], weights: Weights, dataset: str, split: str, flip: bool):
  """EvalSpecs for --evals; 'main' is the checkpoint's own dataset / eval split."""
  from senet_jax import evaluation
  specs = []
  for name in names:
    if name == 'main':
      ds = dataset or weights.config.get('dataset')
      sp = split or weights.config.get('eval_split')
      if not ds or not sp:
        raise ValueError("--evals=main needs a training checkpoint or --dataset and --split")
      specs.append(evaluation.EvalSpec(ds, ds, sp, flip=flip))
    elif name in evaluation.SHIPPED:
      specs.append(dataclasses.replace(evaluation.SHIPPED[name], flip=flip))
    else:
      raise ValueError(f"--evals: unknown evaluator {name!r}; use 'main' or one of "
                       f'{sorted(evaluation.SHIPPED)}')
  evaluation.check_specs(specs, weights.num_classes)
  return specs


def check_resolutions(weights: Weights, resolutions: list[int]) -> None:
  """ValueError when a test resolution is below what the model accepts."""
  from senet_jax.models import min_resolution
  minimum = min_resolution(weights.model)
  low = [r for r in resolutions if r < minimum]
  if low:
    raise ValueError(f'--resolutions: {low} below the minimum input of {weights.model_name} '
                     f'({minimum} px)')


def rows_for(weights: Weights, spec, resolutions, crops, batch_size: int,
             data_dir: str | None) -> list[dict]:
  """CSV rows of one weights x evaluator over the (resolution, crop) grid."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from senet_jax import evaluation
  from senet_jax.models import counting
  mesh = Mesh(jax.devices(), ('data',))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  variables = jax.device_put(weights.variables, replicated)
  to_global = lambda b: {k: jax.make_array_from_process_local_data(data_sharding, v)
                         for k, v in b.items()}
  points = evaluation.sweep(
      spec, weights.model, weights.prep,
      [('', variables['params'], variables.get('batch_stats', {}))], resolutions, crops,
      num_classes=weights.num_classes, batch_size=batch_size, data_dir=data_dir,
      out_sharding=replicated, to_global=to_global, process_index=jax.process_index(),
      process_count=jax.process_count(), device_count=jax.device_count())
  best = evaluation.best(points)
  rows = []
  for p in points:
    params, macs = counting.count(weights.model, p['image_size'])
    rows.append(dict(
        model=weights.model_name, img_size=p['image_size'], top1=round(100 * p['top1'], 3),
        top1_err=round(100 * (1 - p['top1']), 3), top5=round(100 * p['top5'], 3),
        top5_err=round(100 * (1 - p['top5']), 3), param_count=round(params / 1e6, 2),
        crop_pct=round(p['crop_pct'], 4), interpolation=weights.prep.interpolation,
        weights=weights.name, evaluator=spec.name, dataset=spec.dataset, split=spec.split,
        flip_tta=int(spec.flip), nll=round(p['loss'], 4), ece=round(100 * p['ece'], 3),
        num_examples=int(p['num_examples']), gmacs=float(f'{macs / 1e9:.4g}'),
        infer_samples_per_sec=round(p['images_per_second'], 1), best=int(p is best)))
  return rows


def write_csv(path: str, rows: list[dict]) -> None:
  """Writes the rows with COLUMNS as header (via a temporary file: never half-written)."""
  import os
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(',') if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  """Command-line flags (see the module docstring)."""
  p = cli.parser(__doc__)
  p.add_argument('--checkpoint', default='', help='comma separated checkpoint directories')
  p.add_argument('--model', default='', help='registered model, random weights')
  p.add_argument('--num_classes', type=int, default=1000, help='with --model')
  p.add_argument('--evals', default='main', help="comma separated: 'main', shipped names")
  p.add_argument('--dataset', default='', help="TFDS name for 'main' (default: checkpoint's)")
  p.add_argument('--split', default='', help="split for 'main' (default: checkpoint's)")
  p.add_argument('--data_dir', default=None)
  p.add_argument('--resolutions', default='', help='comma separated (default: the weights\')')
  p.add_argument('--crops', default='', help='comma separated crop fractions, <= 0: official')
  p.add_argument('--flip', action='store_true', help='flip TTA (mean of probabilities)')
  p.add_argument('--batch_size', type=int, default=128, help='global eval batch')
  p.add_argument('--output', default='results.csv')
  p.add_argument('--coordinator_address', default='', help='host:port of process 0')
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--process_id', type=int, default=0)
  p.add_argument('--distributed', action='store_true', help='jax.distributed auto-detection')
  args = p.parse_args(argv)
  if bool(args.checkpoint) == bool(args.model):
    p.error('give exactly one of --checkpoint or --model')
  return args


def main(argv=None) -> int:
  """Evaluates every weights x evaluator x resolution x crop and writes the CSV."""
  args = parse_args(argv)
  import jax
  if args.coordinator_address:  # several processes: same flags as main.py
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  elif args.distributed:
    jax.distributed.initialize()
  return cli.run(_main, args)


def evaluate(args: argparse.Namespace) -> list[dict]:
  """The CSV rows of every source x evaluator x resolution x crop of the flags."""
  resolutions, crops = _ints(args.resolutions), _floats(args.crops)
  rows = []
  for source in (args.checkpoint.split(',') if args.checkpoint else [args.model]):
    weights = (load_weights(checkpoint=source) if args.checkpoint else
               load_weights(model_name=source, num_classes=args.num_classes,
                            image_size=(resolutions or [0])[0]))
    check_resolutions(weights, resolutions)
    for spec in eval_specs(args.evals.split(','), weights, args.dataset, args.split, args.flip):
      rows += rows_for(weights, spec, resolutions, crops, args.batch_size, args.data_dir)
  return rows


def _main(args: argparse.Namespace) -> int:
  import jax
  rows = evaluate(args)
  if jax.process_index() == 0:
    write_csv(args.output, rows)
    for row in rows:
      mark = '  <- best' if row['best'] else ''
      print(f"{row['model']} {row['evaluator']} {row['img_size']}px crop {row['crop_pct']}: "
            f"top1 {row['top1']:.3f} top5 {row['top5']:.3f} ece {row['ece']:.3f} "
            f"nll {row['nll']:.4f} {row['infer_samples_per_sec']} img/s{mark}")
    print(f'wrote {len(rows)} rows to {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
