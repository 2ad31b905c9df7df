"""Parameters and multiply-accumulates (MACs) of registered models: the table and its command
line. The counting and its convention (which ops count, `se_gating`) are
`senet_jax.models.counting.count`, which training's MFU uses too.

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
