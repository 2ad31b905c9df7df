"""Untrusted images and weight files: limits checked from headers, errors naming the file."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from senet_jax import cam as cam_cli
from senet_jax import predict as predict_cli
from senet_jax import loading
from senet_jax.convert.__main__ import main as convert_main


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
