"""Export: each artifact runs in its own runtime (JAX, TF, TFLite, onnxruntime) and gives the
JAX logits (float formats: max |diff| <= 1e-4 of max |logit|; int8: top-1 agreement)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.convert import core
from senet_jax.export import serving
from senet_jax.export.__main__ import calibration_images, export, main, reference_logits, run
from senet_jax.models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
TINY = dict(stage_sizes=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128), stem_width=16,
            layout='v1.5')  # the quickstart network
PREP = {'image_size': 32, 'eval_crop_fraction': 1.0, 'interpolation': 'bilinear',
        'mean_rgb': [120.0, 110.0, 100.0], 'std_rgb': [60.0, 61.0, 62.0]}


def write_checkpoint(directory, name, kwargs, size=32):
  """A converter-style checkpoint of a randomly initialised model (BN statistics randomised)."""
  model = create_model(name, num_classes=10, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.RandomState(0)
  stats = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.0, 0.3, a.shape).astype(a.dtype),
                       variables.get('batch_stats', {}))
  meta = {'model': name, 'model_kwargs': kwargs, 'num_classes': 10,
          'preprocessing': {**PREP, 'image_size': size}}
  core.save_converted(str(directory), {'params': variables['params'], 'batch_stats': stats},
                      meta)
  return str(directory)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return serving.load(write_checkpoint(tmp_path_factory.mktemp('tiny'), 'se_resnet18', TINY))


def pixels(n=3, size=32):
  return np.random.RandomState(1).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def assert_close(servable, fmt, path, images):
  ref, got = reference_logits(servable, images), run(fmt, path, images)
  assert float(np.max(np.abs(ref[0] - ref[1]))) > 1e-3 * float(np.max(np.abs(ref)))
  rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
  assert rel <= TOLERANCE, (fmt, rel)
  return rel


def test_stablehlo_symbolic_batch_and_the_weights_normalisation(tiny, tmp_path):
  path = str(tmp_path / 'm.stablehlo')
  export(tiny, 'stablehlo', path)
  exported = jax.export.deserialize(bytearray(open(path, 'rb').read()))
  assert str(exported.in_avals[0].shape[0]) == 'b'  # symbolic batch
  images = pixels(5)
  ref = reference_logits(tiny, images)
  # The served function normalises uint8 pixels with the checkpoint's mean / std.
  x = (images[:2].astype(np.float32) - np.float32(PREP['mean_rgb'])) / np.float32(PREP['std_rgb'])
  np.testing.assert_allclose(ref[:2], tiny.model.apply(tiny.variables, x, train=False),
                             rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))
  for n in (2, 5):  # any batch size
    got = run('stablehlo', path, images[:n])
    assert float(np.max(np.abs(got - ref[:n]))) <= TOLERANCE * float(np.max(np.abs(ref)))


def test_tflite_friendly_sigmoid_keeps_values():
  x = jnp.linspace(-30, 30, 101)
  np.testing.assert_allclose(serving.tflite_friendly(jax.nn.sigmoid)(x), jax.nn.sigmoid(x),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(serving.tflite_friendly(jax.nn.swish)(x), jax.nn.swish(x),
                             rtol=1e-6, atol=1e-5)  # float32 rounding of tanh near 1


def test_refusals_name_model_and_format(tiny, tmp_path, monkeypatch):
  path = tmp_path / 'exists'
  path.write_text('keep me')
  with pytest.raises(serving.ExportError, match='exists'):
    export(tiny, 'stablehlo', str(path))
  assert path.read_text() == 'keep me'
  monkeypatch.setitem(serving.SIZE_LIMIT, 'onnx', 1000)
  with pytest.raises(serving.ExportError, match='se_resnet18 cannot be exported as onnx'):
    export(tiny, 'onnx', str(tmp_path / 'm.onnx'))
  with pytest.raises(serving.ExportError, match='calibration'):
    export(tiny, 'tflite_int8', str(tmp_path / 'm.tflite'))
  assert main(['--checkpoint', str(tmp_path / 'none'), '--format', 'stablehlo', '--output',
               str(tmp_path / 'x')]) == 4


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['savedmodel', 'tflite', 'onnx'])
def test_tf_formats_match_jax(tiny, tmp_path, fmt):
  pytest.importorskip('onnxruntime') if fmt == 'onnx' else None
  path = str(tmp_path / f'm.{fmt}')
  export(tiny, fmt, path)
  assert_close(tiny, fmt, path, pixels(3))


@pytest.mark.slow
@pytest.mark.parametrize('timm_name', ['tf_efficientnet_b0', 'tf_mobilenetv3_small_100'])
def test_tflite_and_onnx_for_other_families(tmp_path, timm_name):
  # Converted random timm weights with measured BN statistics: logits that depend on the image
  # (a freshly initialised EfficientNet's barely do).
  pytest.importorskip('onnxruntime')
  from senet_jax.convert import timm as timm_convert
  from tests.test_convert import randomised_timm
  state = {k: v.numpy() for k, v in randomised_timm(timm_name).state_dict().items()}
  _, variables = timm_convert.from_timm(state, timm_name)
  name, kwargs = timm_convert.MODELS[timm_name]
  core.save_converted(str(tmp_path / 'ckpt'), variables, {
      'model': name, 'model_kwargs': kwargs, 'num_classes': 1000,
      'preprocessing': {**PREP, 'image_size': 64}})
  servable = serving.load(str(tmp_path / 'ckpt'))
  for fmt in ('tflite', 'onnx'):
    path = str(tmp_path / f'm.{fmt}')
    export(servable, fmt, path)
    assert_close(servable, fmt, path, pixels(2, 64))


@pytest.mark.slow
def test_int8_agrees_with_float_on_digits(tmp_path):
  # Train the quickstart network briefly, quantize with the train split as calibration, and
  # compare top-1 with the float model on the whole digits eval split.
  workdir = tmp_path / 'qs'
  run_ = subprocess.run([sys.executable, 'main.py', '--config=configs/quickstart.py',
                         f'--workdir={workdir}', f'--config.data_dir={tmp_path / "tfds"}',
                         '--config.num_epochs=6', '--config.eval_every_epochs=6'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert run_.returncode == 0, run_.stderr[-2000:]
  servable = serving.load(str(workdir))
  data_dir = str(tmp_path / 'tfds')
  calibration = calibration_images('senet_digits', 'train', data_dir, 200, servable.preprocessing)
  path = str(tmp_path / 'm.tflite')
  export(servable, 'tflite_int8', path, calibration)
  images = calibration_images('senet_digits', 'test', data_dir, 10_000, servable.preprocessing)
  assert len(images) == 359
  agreement = np.mean(np.argmax(run('tflite_int8', path, images), -1) ==
                      np.argmax(reference_logits(servable, images), -1))
  assert agreement >= 0.97, agreement
