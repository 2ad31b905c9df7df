"""Pretrained-weight converters: logits of converted timm / Keras models match the originals.

The reference models are built with random weights (BatchNorm statistics randomised too, so
eval-mode BN is not the identity) and compared on the same random images.
"""
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')  # test requirement (requirements-test.txt), CI installs it
timm = pytest.importorskip('timm')

from senet_jax.convert import core  # noqa: E402
from senet_jax.convert import timm as timm_convert  # noqa: E402
from senet_jax.convert.__main__ import main as convert_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # max |diff| <= 1e-4 * max |logit|, float32, eval mode


def randomise_batchnorm(model, size=64):
  """Random BN affine parameters, then running statistics measured on random images.

  Measured statistics keep activations normalised through the depth, so the logits depend on
  the input (with arbitrary statistics a random EfficientNet outputs nearly constant logits,
  which would let a wrong conversion pass).
  """
  torch.manual_seed(1)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      m.weight.uniform_(0.5, 1.5)
      m.bias.uniform_(-0.2, 0.2)
      m.momentum = 1.0
    model.train()
    model(torch.randn(8, 3, size, size))
    for m in bns:
      m.momentum = 0.1
  return model.eval()


def randomised_timm(name, **kwargs):
  torch.manual_seed(0)
  return randomise_batchnorm(timm.create_model(name, pretrained=False, **kwargs))


def compare(reference_logits, ours):
  diff = float(np.max(np.abs(np.asarray(ours) - reference_logits)))
  scale = float(np.max(np.abs(reference_logits)))
  # The comparison means something only if the logits depend on the image.
  assert float(np.max(np.abs(reference_logits[0] - reference_logits[1]))) > 1e-3 * scale
  assert diff <= TOLERANCE * scale, (diff, scale)
  return diff, scale


def images(size=64, n=2):
  return np.random.RandomState(0).randn(n, size, size, 3).astype(np.float32)


def torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


# (timm name, family/layout) -- one per family and layout, as the issue asks.
PARITY = ['legacy_seresnet50',        # SE-ResNet, original (Caffe) layout
          'seresnet50',               # SE-ResNet, v1.5 layout
          'legacy_seresnext50_32x4d',  # SE-ResNeXt, original
          'seresnext50_32x4d',         # SE-ResNeXt, v1.5
          'legacy_seresnet18',        # basic blocks (ReLU before SE in timm's legacy weights)
          'tf_efficientnet_b0',       # EfficientNet, TF 'SAME' padding
          'efficientnet_b0',          # EfficientNet, symmetric padding (timm flavour)
          'resnet50',
          'tf_mobilenetv3_large_100',  # MobileNetV3 (hard-sigmoid SE on expanded channels)
          'tf_mobilenetv3_small_100',
          'mobilenetv1_100']          # MobileNet v1 (the SE-MobileNet baseline)


@pytest.mark.parametrize('name', PARITY)
def test_timm_parity(name):
  reference = randomised_timm(name)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, name)
  x = images()
  compare(torch_logits(reference, x), jax.jit(model.apply)(variables, x))


def test_senet154_parity_on_a_shallow_variant():
  # SENet-154's structure (deep stem, 64 groups, 3x3 projections) at depth 1,1,1,1 for speed.
  from timm.models.senet import SENet, SEBottleneck
  torch.manual_seed(0)
  reference = randomise_batchnorm(SENet(
      SEBottleneck, [1, 1, 1, 1], groups=64, reduction=16, inplanes=128, input_3x3=True,
      downsample_kernel_size=3, downsample_padding=1))
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'legacy_senet154', stage_sizes=(1, 1, 1, 1))
  x = images()
  compare(torch_logits(reference, x), jax.jit(model.apply)(variables, x))


def test_inception_resnet_v2_parity_on_a_shallow_variant():
  # One block per stage (and the final linear Block8); 80 px is above the 75 px minimum.
  torch.manual_seed(0)
  reference = timm.create_model('inception_resnet_v2', pretrained=False)
  for stage in ('repeat', 'repeat_1', 'repeat_2'):
    setattr(reference, stage, getattr(reference, stage)[:1])
  reference = randomise_batchnorm(reference, size=80)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'inception_resnet_v2', stage_sizes=(1, 1, 1))
  x = images(80)
  compare(torch_logits(reference, x), jax.jit(model.apply)(variables, x))


def test_train_mode_batchnorm_agrees():
  reference = randomised_timm('seresnet50')
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'seresnet50')
  x = images(n=4)
  reference.train()
  with torch.no_grad():
    ref = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  compare(ref, ours)
  # Running statistics move the same way (PyTorch uses the unbiased batch variance).
  torch_mean = reference.layer1[0].bn1.running_mean.numpy()
  np.testing.assert_allclose(updates['batch_stats']['layer1_0']['bn1']['mean'], torch_mean,
                             rtol=1e-4, atol=1e-5)


def test_classifier_of_other_size_is_mapped():
  reference = randomised_timm('legacy_seresnet18', num_classes=10)
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'legacy_seresnet18')
  assert model.num_classes == 10
  x = images()
  compare(torch_logits(reference, x), jax.jit(model.apply)(variables, x))


def test_missing_unexpected_and_mismatched_are_all_reported():
  state = {k: v.numpy() for k, v in randomised_timm('legacy_seresnet18').state_dict().items()}
  del state['layer1.0.conv1.weight']
  state['layer1.0.extra.weight'] = np.zeros((3,), np.float32)
  state['layer2.0.conv2.weight'] = np.zeros((128, 128, 5, 5), np.float32)
  with pytest.raises(core.ConversionError) as err:
    timm_convert.from_timm(state, 'legacy_seresnet18')
  message = str(err.value)
  assert 'layer1_0/conv1/kernel' in message           # missing
  assert 'layer1.0.extra.weight' in message           # unexpected
  assert 'layer2_0/conv2/kernel: (5, 5, 128, 128)' in message  # shape mismatch


def test_keras_efficientnet_parity(tmp_path):
  keras = pytest.importorskip('keras')
  h5py = pytest.importorskip('h5py')
  from keras.src.legacy.saving import legacy_h5_format
  from senet_jax.convert.keras import from_keras
  model_k = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3),
                                              classifier_activation=None)
  rng = np.random.RandomState(0)
  bns = [l for l in model_k.layers if isinstance(l, keras.layers.BatchNormalization)]
  for layer in model_k.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      g, b, mu, v = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.uniform(-.2, .2, b.shape), mu, v])
      layer.momentum = 0.0  # the next training-mode call measures the statistics
    if isinstance(layer, keras.layers.Normalization):  # the ImageNet stats Keras ships
      _, _, count = layer.get_weights()
      layer.set_weights([np.array([0.485, 0.456, 0.406]),
                         np.array([0.229, 0.224, 0.225]) ** 2, count])
      layer.finalize_state()
  model_k(rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32), training=True)
  for layer in bns:
    layer.momentum = 0.99
  path = str(tmp_path / 'efficientnetb0.h5')
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model_k)
  model, variables, prep = from_keras(path, 'efficientnetb0', imagenet_rescaling=False)
  np.testing.assert_allclose(prep.mean_rgb, (123.675, 116.28, 103.53), rtol=1e-5)
  pixels = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  reference = np.asarray(model_k(pixels, training=False))
  x = (pixels - np.float32(prep.mean_rgb)) / np.float32(prep.std_rgb)
  compare(reference, jax.jit(model.apply)(variables, x))


class RunsCode:
  """A pickle payload that would create a file if it were ever unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_pickles_are_refused_and_their_code_never_runs(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    pickle.dump({'conv1.weight': RunsCode(str(marker))}, f)
  out = tmp_path / 'out'
  assert convert_main(['--from', 'timm', '--model', 'resnet50', '--input', str(path),
                       '--output', str(out)]) == 2
  assert convert_main(['--from', 'timm', '--model', 'resnet50', '--input', str(path),
                       '--output', str(out), '--allow_pickle']) == 2
  assert not marker.exists()


def test_cli_roundtrip_to_eval_on_digits(tmp_path):
  from safetensors.numpy import save_file
  reference = randomised_timm('legacy_seresnet18')
  weights = tmp_path / 'w.safetensors'
  save_file({k: np.ascontiguousarray(v.numpy()) for k, v in reference.state_dict().items()},
            str(weights))
  out = tmp_path / 'converted'
  assert convert_main(['--from', 'timm', '--model', 'legacy_seresnet18', '--input',
                       str(weights), '--output', str(out), '--num_classes', '10']) == 0
  config_file = tmp_path / 'converted_eval.py'
  config_file.write_text(CONVERTED_EVAL_CONFIG)
  run = subprocess.run(
      [sys.executable, 'main.py', f'--config={config_file}', '--mode=eval',
       f'--workdir={tmp_path / "eval"}', f'--config.data_dir={tmp_path / "tfds"}',
       f'--config.init_from={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'final eval' in run.stdout and '359 images' in run.stdout  # progress.format_results


CONVERTED_EVAL_CONFIG = """
import ml_collections
from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model = 'se_resnet18'
  config.model_kwargs = ml_collections.ConfigDict(dict(layout='original',
                                                       basic_relu_before_se=True))
  return config
"""
