r"""Print a model's layer table (module, output shape, parameters) at a resolution.

    python -m senet_jax.tools.summary se_resnet50
    python -m senet_jax.tools.summary efficientnet_b3 --resolution=300 --depth=2
    python -m senet_jax.tools.summary se_resnet50 --field se_reduction=8 --field layout=v1.5
"""
from __future__ import annotations

import ast
import sys

from senet_jax.utils import cli


def parse_fields(items: list[str]) -> dict:
  """['a=1', 'b=v1.5'] -> {'a': 1, 'b': 'v1.5'} (Python literals where they parse)."""
  fields = {}
  for item in items:
    key, _, value = item.partition('=')
    try:
      fields[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      fields[key] = value
  return fields


def summary_table(name: str, resolution: int | None = None, depth: int = 1, **fields) -> str:
  """The flax tabulate table of a registered model (shapes only, nothing is computed).

  Its footer counts parameters and BatchNorm statistics separately (flax's own 'Total
  Parameters' adds them up); the inputs column shows the image only.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from senet_jax.models import create_model, model_info
  resolution = resolution or model_info(name).resolution
  model = create_model(name, **fields)
  images = jnp.zeros((1, resolution, resolution, 3))
  text = _tabulate(model, images, depth)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  counts = {k: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))
            for k, tree in shapes.items()}
  footer = (f'Parameters: {counts.get("params", 0):,} (trained)' +
            ''.join(f'; {k}: {n:,} (not trained)' for k, n in counts.items() if k != 'params'))
  lines = [footer if 'Total Parameters:' in line else line for line in text.splitlines()
           if not _only_train_flag(line)]
  return '\n'.join(lines) + '\n'


def _tabulate(model, images, depth: int) -> str:
  """flax's table (nn.tabulate's own two steps) with the variable columns in a fixed order,
  params first: flax takes them from a set, whose order follows the strings' hashes (it changed
  between families, and between runs)."""
  import jax
  from flax.linen import summary as flax_summary
  table = flax_summary._get_module_table(model, depth=depth, show_repeated=False,
                                         compute_flops=False, compute_vjp_flops=False)(
                                             jax.random.key(0), images, train=False)
  table.collections = tuple(sorted(table.collections, key=lambda c: (c != 'params', c)))
  return flax_summary._render_table(table, {'width': 140, 'force_terminal': False}, {}, {},
                                    ['path', 'module', 'inputs', 'outputs'])


def _only_train_flag(line: str) -> bool:
  """The table row that lists the `train=False` keyword as a second model input."""
  cells = [c.strip() for c in line.split('\u2502')[1:-1]]
  return bool(cells) and [c for c in cells if c] in (['- train: False'], ['- False'])


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('model')
  p.add_argument('--resolution', type=int, default=0)
  p.add_argument('--depth', type=int, default=1, help='module nesting shown')
  p.add_argument('--field', action='append', default=[], help='model field=value')
  return cli.run(lambda a: print(summary_table(a.model, a.resolution or None, a.depth,
                                                **parse_fields(a.field))), p.parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
