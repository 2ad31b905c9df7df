"""Parameters and multiply-accumulates (MACs) of registered models, counted analytically.

Every convolution and dense layer reports its MACs while the model is traced with
`jax.eval_shape` (nothing is compiled or allocated):
conv: N * H_out * W_out * k * k * (C_in / groups) * C_out; dense: N * C_in * C_out. This is the
convention of the papers' and timm's tables (elementwise ops, BatchNorm and the SE gating
multiply are not counted). `se_gating=True` also counts the SE block's channel-wise rescaling
(N * H * W * C multiplies), which the SE paper's tables include: with it SE-MobileNet comes to
the paper's 572 MFLOPs from 569.

    python -m senet_jax.complexity --models=resnet50,se_resnet50,efficientnet_b0
"""
from __future__ import annotations

import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import create_model, layers, list_models, model_info
from senet_jax.models.attention import ATTN_LAYERS
from senet_jax.utils import cli


def _layer_macs(module, args, out) -> int:
  if isinstance(module, layers.Conv2d):
    cin = args[0].shape[-1]
    kernel = math.prod(layers.kernel_hw(module.kernel_size))
    return math.prod(out.shape) * kernel * cin // module.groups
  if isinstance(module, nn.Conv):
    kernel = math.prod(module.kernel_size)
    return math.prod(out.shape) * kernel * args[0].shape[-1] // module.feature_group_count
  if isinstance(module, nn.Dense):
    return math.prod(out.shape) * args[0].shape[-1]
  return 0


def count(model: nn.Module, resolution: int, se_gating: bool = False) -> tuple[int, int]:
  """(parameters, MACs) of one forward pass of a single image at `resolution`."""
  total = [0]

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      total[0] += _layer_macs(context.module, args, out)
      if se_gating and isinstance(context.module, tuple(ATTN_LAYERS.values())):
        total[0] += math.prod(out.shape)
    return out

  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(model.init, jax.random.key(0),
                               jnp.zeros((1, resolution, resolution, 3)))
  return layers.count_params(variables['params']), total[0]


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
