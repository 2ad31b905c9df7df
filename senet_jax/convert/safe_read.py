"""Reading untrusted weight files: the header is checked before anything is allocated.

A safetensors file is an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}} (plus an optional `__metadata__` of strings) and the
data, the tensors stored back to back in the order of their offsets. Every rule of the format
is checked here, so garbage, a truncated file, a header that claims more bytes than the file
holds or a malformed tensor entry each become one ConversionError line naming the file (and the
tensor), never a library traceback.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from senet_jax.convert.core import ConversionError

MAX_HEADER_BYTES = 100 * 2 ** 20  # the safetensors library's own limit
# Bytes per element of every dtype of the safetensors format (its specification).
DTYPE_BYTES = {'BOOL': 1, 'U8': 1, 'I8': 1, 'F8_E5M2': 1, 'F8_E4M3': 1, 'F8_E8M0': 1,
               'I16': 2, 'U16': 2, 'F16': 2, 'BF16': 2, 'I32': 4, 'U32': 4, 'F32': 4,
               'I64': 8, 'U64': 8, 'F64': 8, 'C64': 8}
# The subset safetensors' numpy API can load (numpy has no bfloat16 / float8 dtypes).
NUMPY_DTYPES = ('BOOL', 'U8', 'I8', 'I16', 'U16', 'F16', 'I32', 'U32', 'F32', 'I64', 'U64',
                'F64', 'C64')


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _tensor_span(path: str, name: str, entry, data_size: int) -> tuple[int, int]:
  """(begin, end) data offsets of one header entry, after checking all of its fields."""
  where = f'{path}: tensor {name!r:.100}'
  if not isinstance(entry, dict):
    raise ConversionError(f'{where}: expected {{"dtype", "shape", "data_offsets"}}, got a '
                          f'JSON {type(entry).__name__}')
  dtype, shape, offsets = entry.get('dtype'), entry.get('shape'), entry.get('data_offsets')
  if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
    raise ConversionError(f'{where}: unknown dtype {dtype!r:.40} (expected one of '
                          f'{", ".join(DTYPE_BYTES)})')
  if dtype not in NUMPY_DTYPES:
    raise ConversionError(f'{where}: dtype {dtype} cannot be read by the numpy reader (numpy '
                          f'has no such type); save the weights as float32 or float16')
  if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
    raise ConversionError(f'{where}: shape {shape!r:.80} is not a list of non-negative integers')
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
      or not 0 <= offsets[0] <= offsets[1]):
    raise ConversionError(f'{where}: data_offsets {offsets!r:.80} are not two integers '
                          f'[begin, end] with 0 <= begin <= end')
  begin, end = offsets
  if end > data_size:
    raise ConversionError(f'{path}: truncated or damaged (tensor {name!r:.100} lies outside the '
                          f'file\'s {data_size} data bytes)')
  nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
  if end - begin != nbytes:
    raise ConversionError(f'{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes, '
                          f'but shape {shape} of {dtype} needs {nbytes}')
  return begin, end


def _check_layout(path: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
  """The tensors must fill the data area back to back, without gaps or overlaps."""
  expected = 0
  for begin, end, name in sorted(spans):
    if begin != expected:
      raise ConversionError(f'{path}: tensor {name!r:.100} starts at data byte {begin}, '
                            f'expected {expected} (tensors overlap or leave a gap)')
    expected = end
  if expected != data_size:
    raise ConversionError(f'{path}: damaged (the tensors end at data byte {expected}, the file '
                          f'has {data_size} data bytes)')


def check_safetensors_header(path: str) -> dict:
  """The parsed header of `path`, or ConversionError saying what is wrong with the file."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise ConversionError(f'{path}: not a safetensors file ({size} bytes, truncated or empty)')
    (length,) = struct.unpack('<Q', prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
      raise ConversionError(f'{path}: not a safetensors file or truncated (header claims '
                            f'{length} bytes, the file has {size})')
    raw = f.read(length)
  try:
    header = json.loads(raw)
  except (UnicodeDecodeError, ValueError, RecursionError):
    raise ConversionError(f'{path}: not a safetensors file (unreadable header)') from None
  if not isinstance(header, dict):
    raise ConversionError(f'{path}: not a safetensors file (header is not a mapping)')
  metadata = header.get('__metadata__', {})
  if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
    raise ConversionError(f'{path}: __metadata__ is not a mapping of strings to strings')
  data_size = size - 8 - length
  spans = [(*_tensor_span(path, name, entry, data_size), name)
           for name, entry in header.items() if name != '__metadata__']
  _check_layout(path, spans, data_size)
  return header


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a checked safetensors file; every failure is one line naming it."""
  check_safetensors_header(path)
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except Exception as err:  # noqa: BLE001 - the library's errors do not name the file
    raise ConversionError(f'{path}: unreadable safetensors file ({type(err).__name__}: '
                          f'{(str(err).splitlines() or [""])[0][:200]})') from None
