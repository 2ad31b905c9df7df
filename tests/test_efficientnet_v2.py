"""EfficientNetV2: exact sizes against timm/Keras, block tables, Fused-MBConv, SE knobs, FLOPs."""
import jax
import jax.numpy as jnp
import pytest

from conftest import params_without_gradient
from senet_jax.models import (collect_excitations, counting, create_model, efficientnet_v2,
                              model_info)

# Trainable parameters of timm `tf_efficientnetv2_*` (timm 1.0, pretrained=False) and of
# keras.applications.EfficientNetV2* (trainable weights; Keras has no XL). They agree.
PARAM_COUNTS = {
    'b0': 7_139_704, 'b1': 8_141_052, 'b2': 10_096_086, 'b3': 14_358_406,
    's': 21_458_488, 'm': 54_139_356, 'l': 118_515_272, 'xl': 208_119_808,
}
# google/automl efficientnetv2 README (params, GFLOPs at the eval size; FLOPs = multiply-adds).
# The paper's Table 7 rounds the same models to 22M/8.8B (S), 54M/24B (M), 120M/53B (L).
# XL: 94B in the paper's Table 7 (ImageNet21k models).
README_GFLOPS = {'b0': 0.72, 'b1': 1.2, 'b2': 1.7, 'b3': 3.0, 's': 8.4, 'm': 24.7, 'l': 56.3,
                 'xl': 94.0}
# Tracing a full-size model costs 3-10 s on 2 cores: b0 and s in the fast suite, the rest slow.
FAST = ('b0', 's')


def _variants(names):
  return [v if v in FAST else pytest.param(v, marks=pytest.mark.slow) for v in names]


@pytest.mark.parametrize('variant', _variants(PARAM_COUNTS))
def test_exact_parameter_counts_and_flops_of_the_official_table(variant):
  name = f'efficientnetv2_{variant}'
  params, macs = counting.count(create_model(name), model_info(name).resolution)
  assert params == PARAM_COUNTS[variant]
  assert abs(macs / 1e9 / README_GFLOPS[variant] - 1) < 0.03


def test_s_table_decodes_to_paper_table_4():
  stages = create_model('efficientnetv2_s').stage_args()
  # Paper Table 4: (operator, stride, channels, layers); Fused-MBConv1/4 then MBConv4/6 + SE.
  assert [(a.fused, a.expand_ratio, a.stride, a.out_channels, a.repeats, a.se_ratio)
          for a in stages] == [(True, 1, 1, 24, 2, None), (True, 4, 2, 48, 4, None),
                               (True, 4, 2, 64, 4, None), (False, 4, 2, 128, 6, 0.25),
                               (False, 6, 1, 160, 9, 0.25), (False, 6, 2, 256, 15, 0.25)]


def test_v2_rounding_has_no_ten_percent_correction():
  # B3 (width 1.2): 16 * 1.2 = 19.2 -> 16 in V2 (V1's rule gives 24); head 1280 * 1.2 = 1536.
  assert efficientnet_v2.round_filters(16, 1.2) == 16
  assert efficientnet_v2.round_filters(1280, 1.2) == 1536
  stages = create_model('efficientnetv2_b3').stage_args()
  assert [a.repeats for a in stages] == [2, 3, 3, 5, 7, 12]  # ceil(1.4 * (1,2,2,3,5,8))
  assert [a.out_channels for a in stages] == [16, 40, 56, 112, 136, 232]


def tiny(**kw):
  blocks = ('r1_k3_s1_e1_i8_o8_c1', 'r1_k3_s2_e4_i8_o16_c1', 'r2_k3_s2_e4_i16_o16_se0.25')
  return create_model('efficientnetv2_s', num_classes=4, blocks=blocks, head_channels=32, **kw)


def shapes(model):
  """Variables and the 'intermediates' of one forward pass, as shapes (nothing compiled)."""
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(lambda v: model.apply(v, x, mutable=('intermediates',)), variables)
  return variables['params'], state.get('intermediates', {})


def test_fused_blocks_have_no_depthwise_conv_and_se_only_in_mbconv_stages():
  params, _ = shapes(tiny())
  assert set(params['blocks_0_0']) == {'conv', 'bn'}
  assert params['blocks_0_0']['conv']['kernel'].shape == (3, 3, 8, 8)
  assert set(params['blocks_1_0']) == {'conv_exp', 'bn_exp', 'conv_pwl', 'bn_pwl'}
  assert params['blocks_1_0']['conv_exp']['kernel'].shape == (3, 3, 8, 32)
  # MBConv: SE width 0.25 x block input (16 -> 4) on the expanded 64 channels.
  assert params['blocks_2_0']['se']['reduce']['kernel'].shape == (1, 1, 64, 4)


def test_se_knobs():
  params, intermediates = shapes(tiny(se_stages=(2, 3, 4), se_reduction=2))
  assert params['blocks_0_0']['se']['reduce']['kernel'].shape == (1, 1, 8, 4)  # before conv
  assert params['blocks_1_0']['se']['reduce']['kernel'].shape == (1, 1, 32, 4)
  assert list(collect_excitations(intermediates)) == [
      'SE_2_1', 'SE_3_1', 'SE_4_1', 'SE_4_2']
  no_se, _ = shapes(tiny(se=False))
  assert not any('se' in block for block in no_se.values() if isinstance(block, dict))
  with pytest.raises(ValueError, match='se_stages'):
    tiny(se_stages=(9,))


@pytest.mark.slow  # a compile of forward + backward (~30 s on 2 loaded cores)
def test_every_parameter_gets_a_nonzero_gradient():
  assert not params_without_gradient(tiny(se_stages=(2, 3, 4)))


def test_bad_block_string():
  with pytest.raises(ValueError, match='conv type'):
    efficientnet_v2.decode_v2_block_string('r1_k3_s1_e1_i8_o8_c2')
