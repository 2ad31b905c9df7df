"""EfficientNetV2 converters: logits of converted timm / Keras B0 match the originals.

Same method as test_convert.py (random weights, randomised BatchNorm statistics, 64 px); the
larger variants share the code path and are covered by exact parameter counts.
"""
import jax
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('timm')

from senet_jax.convert import timm as timm_convert  # noqa: E402
from test_convert import compare, images, randomised_timm, torch_logits  # noqa: E402


def test_timm_tf_efficientnetv2_b0_parity():
  reference = randomised_timm('tf_efficientnetv2_b0')
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'tf_efficientnetv2_b0')
  x = images()
  compare(torch_logits(reference, x), jax.jit(model.apply)(variables, x))
  prep = timm_convert.preprocessing('tf_efficientnetv2_b0')
  assert (prep.image_size, prep.eval_crop_fraction) == (224, 0.875)


@pytest.mark.slow  # ~40 s (Keras model build); the V1 Keras test covers the shared reader fast
def test_keras_efficientnetv2_b0_parity(tmp_path):
  keras = pytest.importorskip('keras')
  h5py = pytest.importorskip('h5py')
  from keras.src.legacy.saving import legacy_h5_format
  from senet_jax.convert.keras import from_keras
  model_k = keras.applications.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3),
                                                classifier_activation=None)
  rng = np.random.RandomState(0)
  bns = [l for l in model_k.layers if isinstance(l, keras.layers.BatchNormalization)]
  for layer in bns:
    g, b, mu, v = layer.get_weights()
    layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.uniform(-.2, .2, b.shape), mu, v])
    layer.momentum = 0.0  # the next training-mode call measures the statistics
  model_k(rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32), training=True)
  path = str(tmp_path / 'efficientnetv2-b0.h5')
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model_k)
  model, variables, prep = from_keras(path, 'efficientnetv2b0')
  # Keras V2-B0's own input layers: Rescaling(1/255) + Normalization(ImageNet mean/variance).
  np.testing.assert_allclose(prep.mean_rgb, (123.675, 116.28, 103.53), rtol=1e-5)
  np.testing.assert_allclose(prep.std_rgb, (58.395, 57.12, 57.375), rtol=1e-5)
  pixels = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  reference = np.asarray(model_k(pixels, training=False))
  x = (pixels - np.float32(prep.mean_rgb)) / np.float32(prep.std_rgb)
  compare(reference, jax.jit(model.apply)(variables, x))
