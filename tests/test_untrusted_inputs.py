"""Untrusted images and weight files: limits checked from headers, errors naming the file."""
import io
import json
import pickle
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from senet_jax import loading
from senet_jax.tools import cam as cam_cli
from senet_jax.tools import predict as predict_cli
from senet_jax.convert.__main__ import main as convert_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png_claiming(width, height) -> bytes:
  """A 1x1 PNG whose IHDR claims width x height: a decompression bomb's header, 70 bytes."""
  buf = io.BytesIO()
  Image.new('RGB', (1, 1)).save(buf, 'PNG')
  data = bytearray(buf.getvalue())
  ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
  data[ihdr:ihdr + 8] = struct.pack('>II', width, height)
  crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
  data[ihdr + 13:ihdr + 17] = struct.pack('>I', crc)
  return bytes(data)


@pytest.fixture
def images(tmp_path):
  good = tmp_path / 'good.png'
  Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(good)
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(_png_claiming(20000, 20000))
  garbage = tmp_path / 'notes.txt'
  garbage.write_text('not an image')
  truncated = tmp_path / 'cut.png'
  truncated.write_bytes(good.read_bytes()[:60])
  return {'good': str(good), 'bomb': str(bomb), 'garbage': str(garbage),
          'truncated': str(truncated), 'missing': str(tmp_path / 'missing.jpg')}


def test_decompression_bomb_is_refused_from_its_header(images):
  with open(images['bomb'], 'rb') as f:  # what the header claims
    assert struct.unpack('>II', f.read()[16:24]) == (20000, 20000)
  with pytest.raises(loading.ImageError, match=r'bomb\.png: PNG of 20000x20000 pixels exceeds'):
    loading.read_image_bytes(images['bomb'])
  assert loading.read_image_bytes(images['good'], max_pixels=1200)  # 30x40 = 1200: allowed
  with pytest.raises(loading.ImageError, match='good.png'):
    loading.read_image_bytes(images['good'], max_pixels=1199)


def test_bad_files_are_named_and_the_rest_of_the_batch_continues(images):
  loaded = loading.Loaded(model=None, variables={}, num_classes=10, image_size=32,
                          eval_crop_fraction=1.0, interpolation='bilinear',
                          mean_rgb=(0., 0., 0.), std_rgb=(1., 1., 1.), config={})
  order = ['bomb', 'good', 'garbage', 'missing', 'truncated']
  batch, shown, kept, errors = loading.preprocess_images([images[k] for k in order], loaded)
  assert kept == [images['good']] and batch.shape == (1, 32, 32, 3)
  np.testing.assert_allclose(batch, 200.0, atol=1e-3)  # the good image, resized
  assert len(errors) == 4
  for error, key in zip(errors, ['bomb', 'garbage', 'missing', 'truncated']):
    assert error.startswith(images[key] + ': '), error
  with pytest.raises(loading.ImageError, match='bomb.png'):  # the all-or-nothing API
    loading.preprocess_files([images['good'], images['bomb']], loaded)


def test_cam_class_index_is_range_checked(monkeypatch, tmp_path, images):
  fake = loading.Loaded(model=None, variables={}, num_classes=10, image_size=32,
                        eval_crop_fraction=1.0, interpolation='bilinear', mean_rgb=(0, 0, 0),
                        std_rgb=(1, 1, 1), config={})
  monkeypatch.setattr(loading, 'load', lambda checkpoint: fake)
  with pytest.raises(ValueError, match=r'--class_index=999: the model has 10 classes'):
    cam_cli.run('ckpt', [images['good']], str(tmp_path), class_index=999)


def test_analysis_cli_with_a_missing_checkpoint_is_one_line(tmp_path, images, capsys):
  code = predict_cli.main([f'--checkpoint={tmp_path}/nothing', images['good']])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 4 and len(err) == 1 and err[0].startswith('error: no checkpoint found under')


@pytest.mark.parametrize('kind', ['garbage', 'empty', 'oversized_header', 'truncated'])
def test_converter_rejects_unreadable_safetensors_in_one_line(tmp_path, kind, capsys):
  from safetensors.numpy import save_file
  path = tmp_path / f'{kind}.safetensors'
  if kind == 'garbage':
    path.write_bytes(b'\x89PNG this is not a safetensors file at all' * 10)
  elif kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'oversized_header':
    path.write_bytes(struct.pack('<Q', 2 ** 40) + b'{}')
  else:
    save_file({'w': np.ones((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
  code = convert_main(['--from', 'timm', '--model', 'legacy_seresnet50', '--input', str(path),
                       '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: {path}: '), err


def _safetensors(path, header: dict, data_bytes: int):
  """A safetensors file written by hand: the length prefix, `header` as JSON, zero bytes."""
  raw = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(raw)) + raw + b'\0' * data_bytes)


def _f32(shape, offsets):
  return {'dtype': 'F32', 'shape': shape, 'data_offsets': offsets}


# header, data bytes, what the one error line must say (computed by hand from the header)
BAD_HEADERS = {
    'string_offsets': ({'w': _f32([2], ['0', '8'])}, 8, "tensor 'w': data_offsets ['0', '8']"),
    'three_offsets': ({'w': _f32([2], [0, 4, 8])}, 8, "tensor 'w': data_offsets [0, 4, 8]"),
    'unknown_dtype': ({'w': {'dtype': 'F31', 'shape': [2], 'data_offsets': [0, 8]}}, 8,
                      "tensor 'w': unknown dtype 'F31'"),
    'bfloat16': ({'w': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [0, 4]}}, 4,
                 "tensor 'w': dtype BF16 cannot be read by the numpy reader"),
    'negative_dim': ({'w': _f32([-2], [0, 8])}, 8, "tensor 'w': shape [-2] is not a list"),
    'float_dim': ({'w': _f32([2.0], [0, 8])}, 8, "tensor 'w': shape [2.0] is not a list"),
    'size_mismatch': ({'w': _f32([3], [0, 8])}, 8,
                      "tensor 'w': data_offsets [0, 8] hold 8 bytes, but shape [3] of F32 "
                      "needs 12"),
    'overlap': ({'a': _f32([2], [0, 8]), 'b': _f32([2], [4, 12])}, 12,
                "tensor 'b' starts at data byte 4, expected 8"),
    'entry_not_object': ({'w': [0, 8]}, 8, "tensor 'w': expected {\"dtype\""),
    'metadata_not_strings': ({'__metadata__': {'epoch': 3}, 'w': _f32([2], [0, 8])}, 8,
                             '__metadata__ is not a mapping of strings'),
    'trailing_bytes': ({'w': _f32([2], [0, 8])}, 12, 'the tensors end at data byte 8, the file '
                       'has 12 data bytes'),
}


@pytest.mark.parametrize('case', BAD_HEADERS, ids=BAD_HEADERS.keys())
def test_converter_names_the_file_and_tensor_of_a_malformed_safetensors_header(
    tmp_path, case, capsys):
  header, data_bytes, expected = BAD_HEADERS[case]
  path = tmp_path / f'{case}.safetensors'
  _safetensors(path, header, data_bytes)
  code = convert_main(['--from', 'timm', '--model', 'legacy_seresnet50', '--input', str(path),
                       '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: {path}: ') and expected in err[0], err


def test_a_well_formed_hand_written_safetensors_file_still_loads(tmp_path):
  from senet_jax.convert.safe_read import load_safetensors
  path = tmp_path / 'ok.safetensors'
  header = {'__metadata__': {'format': 'pt'}, 'b': {'dtype': 'I64', 'shape': [], 'data_offsets':
                                                    [8, 16]}, 'a': _f32([2], [0, 8])}
  _safetensors(path, header, 16)
  loaded = load_safetensors(str(path))
  np.testing.assert_array_equal(loaded['a'], np.zeros(2, np.float32))
  assert loaded['b'].dtype == np.int64 and loaded['b'].shape == ()


def test_allow_pickle_without_torch_says_torch_is_needed(tmp_path, monkeypatch, capsys):
  path = tmp_path / 'weights.pth'
  path.write_bytes(pickle.dumps({'fc.weight': [[1.0]]}))
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails as if not installed
  code = convert_main(['--from', 'timm', '--model', 'resnet50', '--input', str(path),
                       '--output', str(tmp_path / 'out'), '--allow_pickle'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: {path}: ') and 'pip install torch' in err[0], err


def test_allow_pickle_of_something_else_than_a_state_dict_is_one_line(tmp_path, capsys):
  import torch
  path = tmp_path / 'weights.pth'
  torch.save([torch.ones(2)], str(path))  # loads under weights_only, but is a list
  code = convert_main(['--from', 'timm', '--model', 'resnet50', '--input', str(path),
                       '--output', str(tmp_path / 'out'), '--allow_pickle'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: {path}: expected a state dict'), err


def _h5(path, kind):
  """A file that is not a Keras weights file: garbage, or HDF5 with a missing or odd layer."""
  import h5py
  if kind == 'garbage':
    path.write_bytes(b'this is not an HDF5 file' * 20)
    return
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = [b'stem_bn']
    if kind == 'bn_with_two_arrays':  # a BatchNormalization layer holds 4 arrays
      group = f.create_group('stem_bn')
      group.attrs['weight_names'] = [b'gamma', b'beta']
      group['gamma'], group['beta'] = np.ones(32, np.float32), np.zeros(32, np.float32)


@pytest.mark.parametrize('kind, expected', [
    ('garbage', 'not an HDF5 file'),
    ('missing_layer_group', "damaged Keras HDF5 weights file (layer 'stem_bn'"),
    ('bn_with_two_arrays', "layer 'stem_bn' holds 2 arrays of shapes [(32,), (32,)]"),
])
def test_converter_names_a_bad_keras_h5_file(tmp_path, kind, expected, capsys):
  path = tmp_path / f'{kind}.h5'
  _h5(path, kind)
  code = convert_main(['--from', 'keras', '--model', 'efficientnetb0', '--input', str(path),
                       '--output', str(tmp_path / 'out')])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: {path}: ') and expected in err[0], err


def test_senet_convert_command_exits_2_on_a_malformed_header_without_traceback(tmp_path):
  path = tmp_path / 'w.safetensors'
  _safetensors(path, {'w': _f32([2], ['0', '8'])}, 8)  # the string data_offsets
  run = subprocess.run([sys.executable, '-m', 'senet_jax.convert', '--from', 'timm', '--model',
                        'legacy_seresnet50', '--input', str(path), '--output',
                        str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  assert run.stderr.strip().splitlines() == [
      f"error: {path}: tensor 'w': data_offsets ['0', '8'] are not two integers [begin, end] "
      f"with 0 <= begin <= end"]
