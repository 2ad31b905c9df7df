"""Feature backbones: timm's `features_only` stages, channels, strides and values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.models import create_model, list_models, model_info

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

from senet_jax.convert import timm as timm_convert  # noqa: E402
from tests.test_convert import TOLERANCE, images, randomise_batchnorm, randomised_timm  # noqa: E402

# (timm name, our name) for every family timm also has: feature_info must agree.
SLOW = pytest.mark.slow  # the largest models: only a trace, but a long one
TIMM_EQUIVALENT = [('legacy_seresnet18', 'se_resnet18'), ('seresnet50', 'se_resnet50'),
                   pytest.param('legacy_senet154', 'senet154', marks=SLOW),
                   ('tf_efficientnet_b3', 'efficientnet_b3'),
                   ('tf_mobilenetv3_large_100', 'mobilenetv3_large_100'),
                   ('tf_mobilenetv3_small_100', 'mobilenetv3_small_100'),
                   ('mobilenetv1_100', 'mobilenet_v1'),
                   pytest.param('inception_resnet_v2', 'inception_resnet_v2', marks=SLOW),
                   ('vgg16_bn', 'vgg16_bn')]


def timm_features_info(timm_name):
  """(channels, reductions) of timm's features_only model, built without allocating weights."""
  with torch.device('meta'):
    model = timm.create_model(timm_name, features_only=True, pretrained=False)
  return model.feature_info.channels(), model.feature_info.reduction()


@pytest.mark.parametrize('timm_name,name', TIMM_EQUIVALENT)
def test_feature_info_matches_timm(timm_name, name):
  ours = create_model(name, features_only=True).feature_info
  channels, reductions = timm_features_info(timm_name)
  assert [i.num_chs for i in ours] == list(channels)
  assert [i.reduction for i in ours] == list(reductions)


@pytest.mark.parametrize('family', sorted({model_info(n).family for n in list_models()}))
def test_every_family_has_features_at_growing_strides(family):
  name = next(n for n in list_models() if model_info(n).family == family)
  model = create_model(name, features_only=True)
  reductions = [i.reduction for i in model.feature_info]
  assert reductions == sorted(set(reductions)) and reductions[-1] == 32, reductions
  assert {2, 8, 16, 32} <= set(reductions)


def test_out_indices_shapes_and_shared_variables():
  model = create_model('se_resnet18', features_only=True, out_indices=(1, -1))
  assert [(i.num_chs, i.reduction) for i in model.feature_info] == [(64, 4), (512, 32)]
  x = jnp.asarray(images(64))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  # The classifier's variable tree: a classifier checkpoint loads into the backbone as is.
  classifier_vars = jax.eval_shape(create_model('se_resnet18').init, jax.random.key(0), x)
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape,
                                                                     classifier_vars)
  outs = jax.eval_shape(model.apply, variables, x)
  assert [o.shape for o in outs] == [(2, 16, 16, 64), (2, 2, 2, 512)]
  with pytest.raises(ValueError, match='out_indices=.*5 feature maps'):
    create_model('se_resnet18', features_only=True, out_indices=(5,))


# One per family the issue names: converted weights give timm's feature maps.
PARITY = ['legacy_seresnet18', 'tf_efficientnet_b0', 'tf_mobilenetv3_small_100']


def shallow_seresnext():
  """timm's legacy SE-ResNeXt-50 32x4d at one block per stage (the full one is 4x slower)."""
  from timm.models.senet import SENet, SEResNeXtBottleneck
  torch.manual_seed(0)
  return SENet(SEResNeXtBottleneck, [1, 1, 1, 1], groups=32, reduction=16, inplanes=64,
               input_3x3=False, downsample_kernel_size=1, downsample_padding=0)


@pytest.mark.parametrize('timm_name', PARITY + ['legacy_seresnext50_32x4d'])
def test_features_match_timm(timm_name):
  shallow = timm_name == 'legacy_seresnext50_32x4d'
  if shallow:
    reference = randomise_batchnorm(shallow_seresnext())
    timm_features = timm.models.FeatureListNet(shallow_seresnext(), out_indices=range(5))
  else:
    reference = randomised_timm(timm_name)
    timm_features = timm.create_model(timm_name, features_only=True, pretrained=False)
  missing, _ = timm_features.load_state_dict(reference.state_dict(), strict=False)
  assert not missing
  timm_features.eval()
  overrides = {'stage_sizes': (1, 1, 1, 1)} if shallow else {}
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  classifier, variables = timm_convert.from_timm(state, timm_name, **overrides)
  model = create_model(timm_convert.MODELS[timm_name][0], features_only=True,
                       **timm_convert.MODELS[timm_name][1], **overrides)
  assert model.backbone == classifier
  x = images(64)
  with torch.no_grad():
    expected = [t.numpy().transpose(0, 2, 3, 1)
                for t in timm_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))]
  ours = jax.jit(model.apply)(variables, x)
  assert len(ours) == len(expected) == 5
  for level, (e, o) in enumerate(zip(expected, ours)):
    assert o.shape == e.shape, (level, o.shape, e.shape)
    scale = float(np.max(np.abs(e)))
    assert float(np.max(np.abs(np.asarray(o) - e))) <= TOLERANCE * scale, level
