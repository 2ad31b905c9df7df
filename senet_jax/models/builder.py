"""The one place a configured model is built (trainer, analysis tools, benchmarks).

`build_model` takes the values a model needs, not a training config: the registered name, the
model fields (`model_kwargs`), the classifier size, the compute dtype and the convolution
formulation, which enters here once (`conv_impl`; a different value inside `model_kwargs` is
an error rather than a silent override). Here too the convolution policy is decided once
(`ops.select_conv_policy`: backend, XLA:CPU convolution engine, device count, C++ kernels)
and handed to the model, and both are logged in one line per process.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from senet_jax.models.registry import create_model
from senet_jax.ops.policy import ConvPolicy, select_conv_policy

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_logged: set[tuple] = set()


def build_model(name: str, *, num_classes: int, dtype: str = 'float32', conv_impl: str = 'auto',
                model_kwargs: Mapping[str, Any] | None = None,
                conv_policy: ConvPolicy | None = None):
  """`create_model(name, ...)` with the conv formulation, its policy and the dtype given once.

  Args:
    name: registered model name.
    num_classes: classifier size.
    dtype: 'float32' or 'bfloat16' (compute dtype; parameters stay float32).
    conv_impl: convolution formulation (`ops.IMPLS`; 'auto' picks per backend).
    model_kwargs: the model's other fields; a `conv_impl` here must agree with `conv_impl`
      unless one of them is 'auto'.
    conv_policy: where the model runs (default: `ops.select_conv_policy()` for this process).
  """
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not valid; allowed values: {list(DTYPES)}')
  kwargs = dict(model_kwargs or {})
  inner = kwargs.pop('conv_impl', 'auto')
  if 'auto' not in (inner, conv_impl) and inner != conv_impl:
    raise ValueError(f'conv_impl is set twice: conv_impl={conv_impl!r} and '
                     f'model_kwargs.conv_impl={inner!r}; set it once')
  impl = conv_impl if conv_impl != 'auto' else inner
  policy = conv_policy or select_conv_policy()
  model = create_model(name, num_classes=num_classes, dtype=DTYPES[dtype], conv_impl=impl,
                       conv_policy=policy, **kwargs)
  key = (name, impl, policy.describe(), jax.device_count())
  if key not in _logged:
    _logged.add(key)
    logging.info('model %s: conv_impl=%s on %s, %d device(s)', *key)
  return model
