"""Analytic MAC counts against the reference table (papers / timm), within 3%."""
import pytest

from senet_jax.tools import complexity
from senet_jax.models import create_model

# GMACs at the model's default resolution (../shared/reference/architectures.md sections 2-3).
REFERENCE_GMACS = [
    ('resnet50', dict(layout='v1.5'), 4.11), ('se_resnet50', {}, 3.88),
    ('se_resnet50', dict(layout='v1.5'), 4.11), ('se_resnet101', {}, 7.6),
    ('se_resnet152', {}, 11.3), ('se_resnext50_32x4d', {}, 4.26),
    ('se_resnext101_32x4d', {}, 8.02), ('senet154', {}, 20.77),
    ('efficientnet_b0', {}, 0.39), ('efficientnet_b1', {}, 0.70), ('efficientnet_b2', {}, 1.0),
    ('efficientnet_b3', {}, 1.8), ('efficientnet_b6', {}, 19.0), ('efficientnet_b7', {}, 37.0),
]


@pytest.mark.parametrize('name,overrides,gmacs', REFERENCE_GMACS)
def test_macs_match_reference(name, overrides, gmacs):
  from senet_jax.models import model_info
  _, macs = complexity.count(create_model(name, **overrides), model_info(name).resolution)
  assert abs(macs / 1e9 / gmacs - 1) < 0.03


def test_se_overhead_is_small_in_macs_and_about_ten_percent_in_params():
  rows = complexity.table(['resnet50', 'se_resnet50'])
  assert 0.09 < rows[1]['params_vs_first'] < 0.11      # paper: ~10% more parameters
  assert 0 < rows[1]['macs_vs_first'] < 0.0026         # paper: +0.26% FLOPs (incl. pooling)


def test_conv_macs_by_hand():
  model = create_model('resnet18', num_classes=10, stage_sizes=(1,), stage_planes=(8,),
                       stem_width=8, block='basic')
  params, macs = complexity.count(model, 32)
  # stem 7x7x3x8 at 16x16; two 3x3 8->8 convs at 8x8 (after the stride-2 pool); fc 8x10.
  assert macs == 16 * 16 * 49 * 3 * 8 + 2 * 8 * 8 * 9 * 8 * 8 + 8 * 10
  assert params > 0
