"""Parameters and multiply-accumulates (MACs) of registered models, counted analytically.

Every convolution and dense layer reports its MACs while the model is traced with
`jax.eval_shape` (nothing is compiled or allocated):
conv: N * H_out * W_out * k * k * (C_in / groups) * C_out; dense: N * C_in * C_out. This is the
convention of the papers' and timm's tables (elementwise ops, BatchNorm and the SE gating
multiply are not counted). `se_gating=True` also counts the SE block's channel-wise rescaling
(N * H * W * C multiplies), which the SE paper's tables include: with it SE-MobileNet comes to
the paper's 572 MFLOPs from 569. The counting itself is `senet_jax.models.counting.count`
(training's MFU uses it too); this module is its table and command line.

    python -m senet_jax.tools.complexity --models=resnet50,se_resnet50,efficientnet_b0
"""
from __future__ import annotations

import sys

from senet_jax.models import create_model, list_models, model_info
from senet_jax.models.counting import count
from senet_jax.utils import cli


def table(names: list[str], resolution: int | None = None, se_gating: bool = False) -> list[dict]:
  """Rows with params, GMACs and the change relative to the first model."""
  rows = []
  for name in names:
    res = resolution or model_info(name).resolution
    params, macs = count(create_model(name), res, se_gating)
    rows.append({'model': name, 'resolution': res, 'params': params, 'macs': macs})
  base = rows[0]
  for row in rows:
    row['params_vs_first'] = row['params'] / base['params'] - 1
    row['macs_vs_first'] = row['macs'] / base['macs'] - 1
  return rows


def markdown(rows: list[dict]) -> str:
  """The rows as a Markdown table."""
  out = ['| model | resolution | params (M) | GMACs | params vs first | MACs vs first |',
         '|---|---|---|---|---|---|']
  for r in rows:
    out.append(f"| {r['model']} | {r['resolution']} | {r['params'] / 1e6:.2f} | "
               f"{r['macs'] / 1e9:.3f} | {100 * r['params_vs_first']:+.1f}% | "
               f"{100 * r['macs_vs_first']:+.2f}% |")
  return '\n'.join(out)


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--models', default='resnet50,se_resnet50',
                 help=f'comma separated; any of: {", ".join(list_models())}')
  p.add_argument('--resolution', type=int, default=0, help='0: each model\'s default')
  p.add_argument('--se_gating', action='store_true',
                 help="also count SE's channel-wise multiply (the SE paper's convention)")
  args = p.parse_args(argv)
  return cli.run(lambda a: print(markdown(table(a.models.split(','), a.resolution or None,
                                                a.se_gating))), args)


if __name__ == '__main__':
  sys.exit(main())
