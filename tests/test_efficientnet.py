"""EfficientNet: exact sizes, scaling rules, TF padding, stochastic depth, SE knobs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (TINY_EFFICIENTNET, abstract_param_count, abstract_variables,
                      init_variables, params_without_gradient)
from senet_jax.models import collect_excitations, create_model, efficientnet, layers

# The issue / reference counts (timm tf_efficientnet_* = official TF checkpoints).
PARAM_COUNTS = {
    'b0': 5_288_548, 'b1': 7_794_184, 'b2': 9_109_994, 'b3': 12_233_232, 'b4': 19_341_616,
    'b5': 30_389_784, 'b6': 43_040_704, 'b7': 66_347_960, 'b8': 87_413_142,
}


@pytest.mark.parametrize('variant', sorted(PARAM_COUNTS))
def test_exact_parameter_counts(variant):
  assert abstract_param_count(f'efficientnet_{variant}', size=64) == PARAM_COUNTS[variant]


def test_l2_size_matches_reference_to_published_precision():
  assert round(abstract_param_count('efficientnet_l2', size=32) / 1e6, 2) == 480.31


def test_timm_flavour_has_the_same_parameters():
  assert (abstract_param_count('efficientnet_b0', size=64, **efficientnet.TIMM_FLAVOUR)
          == PARAM_COUNTS['b0'])


@pytest.mark.parametrize('variant,head', [('b0', 1280), ('b2', 1408), ('b3', 1536),
                                          ('b4', 1792), ('b5', 2048), ('b7', 2560)])
def test_head_width_matches_keras(variant, head):
  # Keras applications' top_conv widths.
  width = efficientnet.RELEASED[variant][0]
  assert efficientnet.round_filters(1280, width) == head


def test_b0_table_decodes_to_paper_table():
  stages = create_model('efficientnet_b0').stage_args()
  assert [(a.repeats, a.kernel_size, a.stride, a.expand_ratio, a.out_channels)
          for a in stages] == [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
                               (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
                               (1, 3, 1, 6, 320)]


def test_depth_rounds_up():
  # B3 depth 1.4: repeats 1,2,2,3,3,4,1 -> 2,3,3,5,5,6,2 (ceil), 26 blocks as in the paper code.
  stages = create_model('efficientnet_b3').stage_args()
  assert [a.repeats for a in stages] == [2, 3, 3, 5, 5, 6, 2]


def test_compound_scaling_coefficients():
  width, depth, res = efficientnet.compound_scaling(1)
  assert (round(width, 6), round(depth, 6), res) == (1.1, 1.2, 256)
  width, depth, res = efficientnet.compound_scaling(0)
  assert (width, depth, res) == (1.0, 1.0, 224)
  # alpha * beta^2 * gamma^2 ~= 2: FLOPs double per unit of phi.
  assert abs(1.2 * 1.1 ** 2 * 1.15 ** 2 - 1.92) < 0.01


def test_phi_builds_a_new_family_member():
  model = create_model('efficientnet', phi=1.0)
  assert model.coefficients() == pytest.approx((1.1, 1.2))
  assert abstract_param_count('efficientnet', size=64, phi=1.0) > PARAM_COUNTS['b1']


@pytest.mark.parametrize('variant', sorted(efficientnet.RELEASED))
def test_output_shapes_and_defaults(variant):
  from senet_jax.models import model_info
  info = model_info(f'efficientnet_{variant}')
  assert (info.resolution, info.dropout_rate) == efficientnet.RELEASED[variant][2:]
  model = create_model(f'efficientnet_{variant}', num_classes=3)
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 33, 33, 3)))[0])
  assert out.shape == (2, 3)


def test_tf_same_padding_stride2_even_and_odd():
  ones = jnp.ones((3, 3, 1, 1))
  conv = lambda x, padding: layers.conv_impls.conv_xla(x, ones, 2, padding, 1)
  even = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8, 1)
  out = conv(even, layers.explicit_padding(3, 'tf_same'))
  # 8 -> 4 outputs; total pad 1 goes to the bottom/right: window 0 is rows/cols 0..2.
  assert out.shape == (1, 4, 4, 1)
  assert out[0, 0, 0, 0] == even[0, 0:3, 0:3, 0].sum()
  assert out[0, 3, 3, 0] == even[0, 6:8, 6:8, 0].sum()
  sym = conv(even, layers.explicit_padding(3, 'symmetric'))
  assert sym[0, 0, 0, 0] == even[0, 0:2, 0:2, 0].sum()
  odd = jnp.arange(49, dtype=jnp.float32).reshape(1, 7, 7, 1)
  out = conv(odd, layers.explicit_padding(3, 'tf_same'))
  # 7 -> 4 outputs; total pad 2 split 1/1.
  assert out.shape == (1, 4, 4, 1)
  assert out[0, 0, 0, 0] == odd[0, 0:2, 0:2, 0].sum()


def test_drop_path_identity_at_eval_and_rate_at_train():
  x = jnp.ones((20000, 1, 1, 2))
  module = layers.DropPath(0.3)
  np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
  y = np.asarray(module.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)}))
  dropped = np.all(y == 0, axis=(1, 2, 3))
  assert abs(dropped.mean() - 0.3) < 0.015
  # Whole samples are dropped together; kept samples are scaled by 1 / keep.
  assert np.all((y == 0) | np.isclose(y, 1 / 0.7))
  assert np.all(y[..., 0] == y[..., 1])


def test_drop_path_rate_grows_linearly_with_block_index():
  model = create_model('efficientnet_b0', num_classes=3)
  rates = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.DropPath) and context.method_name == '__call__':
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  # 16 blocks; residual blocks are those with stride 1 and equal channels (9 of them).
  residual_blocks = [2, 4, 6, 7, 9, 10, 12, 13, 14]
  assert rates == pytest.approx([0.2 * i / 16 for i in residual_blocks])


def tiny(**kw):
  return create_model('efficientnet_b0', num_classes=4, **{**TINY_EFFICIENTNET, **kw})


def test_se_width_from_input_channels_and_wide_se():
  params = abstract_variables(tiny())['params']
  # Stage 3 first block: input 8 channels, expanded 48; SE width int(8 * 0.25) = 2.
  assert params['blocks_1_0']['se']['reduce']['kernel'].shape == (1, 1, 48, 2)
  wide = abstract_variables(tiny(se_width_base='expanded'))['params']
  assert wide['blocks_1_0']['se']['reduce']['kernel'].shape == (1, 1, 48, 12)


def test_se_can_be_removed_per_stage_and_gates_recorded():
  model = tiny(se_stages=(2, 4))
  variables = init_variables(model)
  assert 'se' not in variables['params']['blocks_1_0']
  _, state = jax.jit(model.apply, static_argnames='mutable')(
      variables, jnp.ones((2, 32, 32, 3)), mutable=('intermediates',))
  assert list(collect_excitations(state['intermediates'])) == ['SE_2_1', 'SE_4_1']
  no_se = abstract_variables(tiny(se=False))['params']
  assert not any('se' in block for block in no_se.values() if isinstance(block, dict))


def test_every_parameter_gets_a_nonzero_gradient():
  model = tiny(se_gate='hard_sigmoid', se_squeeze='max')
  zero = params_without_gradient(model)
  assert not zero, f'parameters with zero gradient: {zero}'


def test_official_initialisers():
  params = init_variables(create_model('efficientnet_b0', num_classes=10), size=32)['params']
  head = np.asarray(params['conv_head']['kernel'])  # 1x1, 320 -> 1280: std sqrt(2 / 1280)
  assert abs(head.std() - np.sqrt(2 / 1280)) < 0.05 * np.sqrt(2 / 1280)
  dw = np.asarray(params['blocks_5_0']['conv_dw']['kernel'])  # 5x5 depthwise: std sqrt(2/25)
  assert abs(dw.std() - np.sqrt(2 / 25)) < 0.05 * np.sqrt(2 / 25)
  fc = np.asarray(params['classifier']['kernel'])  # U(-1/sqrt(10), 1/sqrt(10))
  assert fc.max() <= 1 / np.sqrt(10) and fc.min() >= -1 / np.sqrt(10)
  assert fc.max() > 0.9 / np.sqrt(10)


def test_bad_block_string_and_knobs():
  with pytest.raises(ValueError, match='block string'):
    efficientnet.decode_block_string('r1_k3_s11_e1_o16')
  with pytest.raises(ValueError, match='se_width_base'):
    create_model('efficientnet_b0', se_width_base='huge')
  with pytest.raises(ValueError, match='padding'):
    create_model('efficientnet_b0', padding='valid')
