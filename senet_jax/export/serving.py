"""The function every export format serves, and the StableHLO format.

Every artifact takes uint8 NHWC images already resized/cropped to the checkpoint's
`image_size` and applies the weights' own normalisation inside: `(pixels - mean_rgb) / std_rgb`,
then the model in eval mode; it returns float32 logits.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from senet_jax import loading

FORMATS = ('stablehlo', 'savedmodel', 'tflite', 'tflite_int8', 'onnx')
# TFLite flatbuffers and ONNX protobufs cannot hold more than 2 GiB.
SIZE_LIMIT = {'tflite': 2 ** 31, 'tflite_int8': 2 ** 31, 'onnx': 2 ** 31}


class ExportError(ValueError):
  """A model/format pair or an input that cannot be exported, named in the message."""


class Servable(loading.Loaded):
  """A model with its weights and its run record (`loading.Loaded`), as exported."""

  @property
  def num_bytes(self) -> int:
    """Size of the float32 weights (what a format's file must hold)."""
    return sum(np.asarray(v).nbytes for v in jax.tree.leaves(self.variables))


def load(checkpoint: str) -> Servable:
  """Reads a training workdir or a converter output; convolutions in plain XLA ops.

  The C++ convolution kernels (`conv_impl`) are custom calls no other runtime has, so the
  exported graph always uses `conv_impl='xla'` (same values).
  """
  loaded = loading.load(checkpoint)
  model = loaded.model
  if 'conv_impl' in {f.name for f in dataclasses.fields(model)}:
    model = model.clone(conv_impl='xla')
  return Servable(**{**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)},
                     'model': model})


# The packages each format's conversion needs beyond requirements.txt (requirements-tf.txt
# has them): checked before the checkpoint is read, not after a SavedModel and TFLite ran.
FORMAT_PACKAGES = {'savedmodel': ('tensorflow',), 'tflite': ('tensorflow',),
                   'tflite_int8': ('tensorflow',), 'onnx': ('tensorflow', 'tf2onnx')}


def check_tools(fmt: str) -> None:
  """Raises ExportError when `fmt` is unknown or its converter package is not installed."""
  if fmt not in FORMATS:
    raise ExportError(f'--format={fmt!r}: expected one of {", ".join(FORMATS)}')
  from senet_jax.utils.tf_host import TF_INSTALL
  for package in FORMAT_PACKAGES.get(fmt, ()):
    if importlib.util.find_spec(package) is None:
      raise ExportError(f'--format={fmt} needs {package}, which is not installed '
                        f'({TF_INSTALL}); nothing was converted')


def check_supported(servable: Servable, fmt: str) -> None:
  """Raises ExportError naming the model and format when the pair cannot be exported."""
  check_tools(fmt)
  limit = SIZE_LIMIT.get(fmt)
  if limit and servable.num_bytes >= limit:
    raise ExportError(f'{servable.name} cannot be exported as {fmt}: its float32 weights '
                      f'({servable.num_bytes / 2 ** 30:.2f} GiB) exceed the 2 GiB that a '
                      f'{fmt.split("_")[0]} file can hold; use stablehlo or savedmodel')


def serving_fn(servable: Servable) -> Callable[[dict, jax.Array], jax.Array]:
  """(variables, uint8 images) -> float32 logits, with the weights' normalisation inside."""
  mean = np.asarray(servable.mean_rgb, np.float32)
  inv_std = 1.0 / np.asarray(servable.std_rgb, np.float32)
  model = servable.model

  def serve(variables, images):
    x = (images.astype(jnp.float32) - mean) * inv_std
    return model.apply(variables, x, train=False).astype(jnp.float32)

  return serve


def tflite_friendly(fn: Callable) -> Callable:
  """`fn` with the logistic function written as 0.5 * tanh(x / 2) + 0.5 (same values).

  JAX lowers `logistic` (sigmoid, swish) to 1 / (1 + exp(-x)); after int8 quantization that
  divisor's range is so wide that values near 1 round to 0 and the TFLite DIV kernel fails.
  tanh is a single, bounded TFLite op that quantizes well.
  """
  def wrapped(*args):
    closed = jax.make_jaxpr(fn)(*args)
    return jax.tree.unflatten(jax.tree.structure(jax.eval_shape(fn, *args)),
                              _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args)))
  return wrapped


def _sub_jaxpr(eqn):
  """The jaxpr an eqn calls (jit / custom_jvp / custom_vjp), or None."""
  for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
    sub = eqn.params.get(key)
    if sub is not None and hasattr(sub, 'jaxpr') and hasattr(sub, 'consts'):
      return sub
  return None


def _eval(jaxpr, consts, *args):
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, value in zip(jaxpr.constvars, consts):
    env[v] = value
  for v, value in zip(jaxpr.invars, args):
    env[v] = value
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    sub = _sub_jaxpr(eqn)
    if eqn.primitive is jax.lax.logistic_p:
      outs = [0.5 * jnp.tanh(0.5 * invals[0]) + 0.5]
    elif sub is not None:  # inline: inference needs only the primal computation
      outs = _eval(sub.jaxpr, sub.consts, *invals[len(invals) - len(sub.jaxpr.invars):])
    else:
      outs = eqn.primitive.bind(*invals, **eqn.params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    for v, value in zip(eqn.outvars, outs):
      env[v] = value
  return [read(v) for v in jaxpr.outvars]


def export_stablehlo(servable: Servable) -> bytes:
  """Serialized `jax.export` artifact with a symbolic batch dimension 'b' (weights inside)."""
  serve = serving_fn(servable)
  variables = servable.variables
  batch = jax.export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((*batch, servable.image_size, servable.image_size, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(lambda images: serve(variables, images)))(spec)
  return bytes(exported.serialize())


def run_stablehlo(data: bytes, images: np.ndarray) -> np.ndarray:
  """Runs a serialized StableHLO artifact on uint8 images."""
  return np.asarray(jax.export.deserialize(bytearray(data)).call(images))
