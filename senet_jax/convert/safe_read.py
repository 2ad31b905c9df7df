"""Reading untrusted weight files: the header is checked before anything is allocated.

A safetensors file is an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}} and the data. Garbage, a truncated file or a header that
claims more bytes than the file holds each become one ConversionError line naming the file.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from senet_jax.convert.core import ConversionError

MAX_HEADER_BYTES = 100 * 2 ** 20  # the safetensors library's own limit


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
  except (UnicodeDecodeError, ValueError):
    raise ConversionError(f'{path}: not a safetensors file (unreadable header)') from None
  if not isinstance(header, dict):
    raise ConversionError(f'{path}: not a safetensors file (header is not a mapping)')
  data_size = size - 8 - length
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    offsets = entry.get('data_offsets') if isinstance(entry, dict) else None
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not 0 <= offsets[0] <= offsets[1] <= data_size):
      raise ConversionError(f'{path}: truncated or damaged (tensor {name!r} lies outside the '
                            f'file\'s {data_size} data bytes)')
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
