"""The one place a configured model is built (trainer, analysis tools, benchmarks).

`build_model` takes the values a model needs, not a training config: the registered name, the
model fields (`model_kwargs`), the classifier size, the compute dtype and the convolution
formulation, which enters here once (`conv_impl`; a different value inside `model_kwargs` is
an error rather than a silent override) and is logged once per process with the backend and
the device count it will run on.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from senet_jax.models.registry import create_model

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_logged: set[tuple] = set()


def build_model(name: str, *, num_classes: int, dtype: str = 'float32', conv_impl: str = 'auto',
                model_kwargs: Mapping[str, Any] | None = None):
  """`create_model(name, ...)` with the conv formulation and compute dtype given once.

  Args:
    name: registered model name.
    num_classes: classifier size.
    dtype: 'float32' or 'bfloat16' (compute dtype; parameters stay float32).
    conv_impl: convolution formulation (`conv_impls.IMPLS`; 'auto' picks per backend).
    model_kwargs: the model's other fields; a `conv_impl` here must agree with `conv_impl`
      unless one of them is 'auto'.
  """
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not valid; allowed values: {list(DTYPES)}')
  kwargs = dict(model_kwargs or {})
  inner = kwargs.pop('conv_impl', 'auto')
  if 'auto' not in (inner, conv_impl) and inner != conv_impl:
    raise ValueError(f'conv_impl is set twice: conv_impl={conv_impl!r} and '
                     f'model_kwargs.conv_impl={inner!r}; set it once')
  impl = conv_impl if conv_impl != 'auto' else inner
  model = create_model(name, num_classes=num_classes, dtype=DTYPES[dtype], conv_impl=impl,
                       **kwargs)
  key = (name, impl, jax.default_backend(), jax.device_count())
  if key not in _logged:
    _logged.add(key)
    logging.info('model %s: conv_impl=%s on %s, %d device(s)', *key)
  return model
