"""Parameters and multiply-accumulates (MACs) of a model, counted analytically (`count`).

Every convolution and dense layer reports its MACs while the model is traced with
`jax.eval_shape` (nothing is compiled or allocated):
conv: N * H_out * W_out * k * k * (C_in / groups) * C_out; dense: N * C_in * C_out. This is the
convention of the papers' and timm's tables (elementwise ops, BatchNorm and the SE gating
multiply are not counted). `se_gating=True` also counts the SE block's channel-wise rescaling
(N * H * W * C multiplies), which the SE paper's tables include: with it SE-MobileNet comes to
the paper's 572 MFLOPs from 569.

The core that training (MFU), the evaluation tool and the complexity tool share; the table and
its command line are `senet_jax.tools.complexity`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from senet_jax.models import layers
from senet_jax.models.attention import ATTN_LAYERS


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
