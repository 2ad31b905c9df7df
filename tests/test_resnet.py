"""ResNet / ResNeXt / SE-ResNet / SENet-154: exact sizes, layouts, SE placement, gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_RESNET, abstract_param_count, init_variables, params_without_gradient
from senet_jax.models import collect_excitations, create_model, list_models, min_resolution
from senet_jax.models import layers

# Parameter counts at 1000 classes. SE family: the issue / reference (timm legacy_* = Caffe
# release); plain ResNets: torchvision's documented counts; ResNeXt-101 32x4d: timm.
PARAM_COUNTS = {
    'resnet18': 11_689_512, 'resnet34': 21_797_672, 'resnet50': 25_557_032,
    'resnet101': 44_549_160, 'resnet152': 60_192_808, 'resnext50_32x4d': 25_028_904,
    'se_resnet50': 28_088_024, 'se_resnet101': 49_326_872, 'se_resnet152': 66_821_848,
    'se_resnext50_32x4d': 27_559_896, 'se_resnext101_32x4d': 48_955_416,
    'senet154': 115_088_984,
}


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_exact_parameter_counts(name):
  assert abstract_param_count(name) == PARAM_COUNTS[name]


def test_se_parameter_formula_for_resnet18():
  # Paper: SE adds sum over blocks of 2*C^2/r weights (+ C/r + C biases in the Caffe release).
  extra = sum(2 * (c * c // 8 + c // 16 + c) for c in (64, 128, 256, 512))
  assert abstract_param_count('se_resnet18') == 11_689_512 + extra


def test_v15_layout_same_size_and_divisible_se_width():
  assert abstract_param_count('se_resnet50', layout='v1.5') == PARAM_COUNTS['se_resnet50']
  # 64 channels / 16 = 4 -> floor keeps 4 (Caffe); make_divisible gives 8 (timm v1.5).
  assert abstract_param_count('se_resnet18', layout='v1.5') > abstract_param_count('se_resnet18')


def test_all_registered_names_present():
  required = {'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnext50_32x4d',
              'resnext101_32x4d', 'se_resnet18', 'se_resnet34', 'se_resnet50', 'se_resnet101',
              'se_resnet152', 'se_resnext50_32x4d', 'se_resnext101_32x4d', 'senet154'}
  assert required <= set(list_models())


@pytest.mark.parametrize('name', list_models())
def test_output_shape_every_model(name):
  model = create_model(name, num_classes=7)
  size = max(64, min_resolution(model))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False)[0])
  assert out.shape == (2, 7) and out.dtype == jnp.float32


def tiny(name='se_resnet50', **kw):
  return create_model(name, num_classes=5, **{**TINY_RESNET, **kw})


def record_calls(model, variables, x, module_names):
  """Runs the model and returns {module_name: (input, output)} of the named submodules."""

  def run(variables, x):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.scope is None or context.method_name != '__call__':
        return out
      path = '/'.join(context.module.path)
      if path in module_names:
        seen[path] = (args[0], out)
      return out

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, train=False)
    return seen

  return jax.jit(run)(variables, x)


BLOCK = 'layer2_0'  # a projecting bottleneck (stride 2, channels change)


def _calls(position, extra=()):
  model = tiny(se_position=position)
  variables = init_variables(model)
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  names = [f'{BLOCK}/{n}' for n in ('se', 'conv1', 'conv3', 'bn3', 'bn2', 'downsample_bn',
                                    *extra)] + [BLOCK]
  return record_calls(model, variables, x, names)


def test_se_standard_gates_the_branch_before_the_sum():
  c = _calls('standard')
  se_in, se_out = c[f'{BLOCK}/se']
  np.testing.assert_array_equal(se_in, c[f'{BLOCK}/bn3'][1])
  shortcut = c[f'{BLOCK}/downsample_bn'][1]
  np.testing.assert_allclose(c[BLOCK][1], nn.relu(shortcut + se_out), rtol=1e-6, atol=1e-6)


def test_se_pre_gates_the_block_input_before_the_branch():
  c = _calls('pre')
  block_in = c[BLOCK][0]
  se_in, se_out = c[f'{BLOCK}/se']
  np.testing.assert_array_equal(se_in, block_in)
  np.testing.assert_array_equal(c[f'{BLOCK}/conv1'][0], se_out)
  # The shortcut still sees the ungated input.
  shortcut = c[f'{BLOCK}/downsample_bn'][1]
  np.testing.assert_allclose(c[BLOCK][1], nn.relu(shortcut + c[f'{BLOCK}/bn3'][1]), atol=1e-6)


def test_se_post_gates_after_the_sum_and_relu():
  c = _calls('post')
  se_in, se_out = c[f'{BLOCK}/se']
  shortcut = c[f'{BLOCK}/downsample_bn'][1]
  np.testing.assert_allclose(se_in, nn.relu(shortcut + c[f'{BLOCK}/bn3'][1]), atol=1e-6)
  np.testing.assert_array_equal(c[BLOCK][1], se_out)


def test_se_identity_gates_the_shortcut():
  c = _calls('identity')
  se_in, se_out = c[f'{BLOCK}/se']
  np.testing.assert_array_equal(se_in, c[f'{BLOCK}/downsample_bn'][1])
  np.testing.assert_allclose(c[BLOCK][1], nn.relu(se_out + c[f'{BLOCK}/bn3'][1]), atol=1e-6)


def test_se_after_3x3_gates_the_grouped_conv_output():
  c = _calls('after_3x3')
  se_in, se_out = c[f'{BLOCK}/se']
  np.testing.assert_array_equal(se_in, nn.relu(c[f'{BLOCK}/bn2'][1]))
  np.testing.assert_array_equal(c[f'{BLOCK}/conv3'][0], se_out)
  # SE on the narrow 3x3 output has fewer parameters than on the 4x wider block output.
  assert (abstract_param_count('se_resnet50', se_position='after_3x3')
          < abstract_param_count('se_resnet50'))


@pytest.mark.parametrize('layout,conv1_size', [('original', 4), ('v1.5', 8)])
def test_layout_moves_the_stride(layout, conv1_size):
  # 32px -> stem /4 -> 8px at stage 2; layer2_0 halves it in conv1 (original) or conv2 (v1.5).
  model = tiny(layout=layout)
  c = record_calls(model, init_variables(model), jnp.ones((1, 32, 32, 3)),
                   [f'{BLOCK}/conv1', f'{BLOCK}/conv2'])
  assert c[f'{BLOCK}/conv1'][1].shape[1] == conv1_size
  assert c[f'{BLOCK}/conv2'][1].shape[1] == 4


def test_resnext_original_layout_strides_in_grouped_conv():
  model = tiny('se_resnext50_32x4d', stage_planes=(32, 64, 64, 128))
  c = record_calls(model, init_variables(model), jnp.ones((1, 32, 32, 3)), [f'{BLOCK}/conv1'])
  assert c[f'{BLOCK}/conv1'][1].shape[1] == 8


def test_max_pool_ceil_mode_matches_hand_computed_windows():
  x = jnp.arange(36, dtype=jnp.float32).reshape(1, 6, 6, 1)
  out = layers.max_pool_ceil(x, 3, 2)[0, :, :, 0]
  # ceil((6 - 3) / 2) + 1 = 3 windows per axis: rows/cols [0:3], [2:5], [4:6].
  np.testing.assert_array_equal(out, [[14, 16, 17], [26, 28, 29], [32, 34, 35]])
  padded = layers.max_pool_padded(x, 3, 2)[0, :, :, 0]
  # padding 1: windows [-1:2], [1:4], [3:6].
  np.testing.assert_array_equal(padded, [[7, 9, 11], [19, 21, 23], [31, 33, 35]])


@pytest.mark.parametrize('window, stride, pads, size', [
    (3, 2, ((1, 1), (1, 1)), (9, 10)),   # torchvision stem
    (3, 2, ((0, 1), (0, 0)), (8, 7)),    # Caffe ceil mode: extra bottom row only
    (3, 1, ((1, 1), (1, 1)), (6, 6)),    # BN-Inception pool tower
    (2, 2, ((0, 0), (0, 0)), (8, 6)),    # VGG
])
def test_max_pool_values_and_gradient_match_reduce_window(window, stride, pads, size):
  x = jax.random.normal(jax.random.key(0), (2, *size, 3))
  ours = jax.jit(lambda x: layers.max_pool(x, window, stride, pads))
  ref = lambda x: nn.max_pool(x, (window, window), (stride, stride), padding=pads)
  np.testing.assert_array_equal(ours(x), ref(x))
  probe = jax.random.normal(jax.random.key(1), ref(x).shape)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * probe)))(x)
  np.testing.assert_allclose(grad(ours), grad(ref), atol=1e-6)  # no ties in random data


def test_max_pool_gradient_goes_to_the_first_maximum_on_ties():
  x = jnp.ones((1, 4, 4, 1))
  dx = jax.grad(lambda x: layers.max_pool(x, 2, 2, ((0, 0), (0, 0))).sum())(x)[0, :, :, 0]
  np.testing.assert_array_equal(dx, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  # overlapping 3x3 / 2 windows with padding 1 on a constant map: each window's first real
  # (non-padding) position wins: rows/cols 0, 1, 3 of a 5x5 map get 1, 1 and 1 windows
  x = jnp.ones((1, 5, 5, 1))
  dx = jax.grad(lambda x: layers.max_pool(x, 3, 2, ((1, 1), (1, 1))).sum())(x)[0, :, :, 0]
  line = np.array([1, 1, 0, 1, 0])
  np.testing.assert_array_equal(dx, np.outer(line, line))


def test_se_stages_select_where_gates_are_recorded():
  model = tiny(se_stages=(3,))
  variables = init_variables(model)
  _, state = jax.jit(model.apply, static_argnames='mutable')(
      variables, jnp.ones((2, 32, 32, 3)), mutable=('intermediates',))
  assert list(collect_excitations(state['intermediates'])) == ['SE_3_1']
  assert 'se' not in variables['params']['layer1_0']


def test_excitations_collected_by_paper_name():
  model = tiny(stage_sizes=(2, 1, 1, 2))
  variables = init_variables(model)
  _, state = jax.jit(model.apply, static_argnames='mutable')(
      variables, jnp.ones((2, 32, 32, 3)), mutable=('intermediates',))
  gates = collect_excitations(state['intermediates'])
  assert list(gates) == ['SE_2_1', 'SE_2_2', 'SE_3_1', 'SE_4_1', 'SE_5_1', 'SE_5_2']
  assert gates['SE_5_2'].shape == (2, 1, 1, 128)
  assert bool(jnp.all((gates['SE_2_1'] > 0) & (gates['SE_2_1'] < 1)))


@pytest.mark.parametrize('name,kw', [
    ('se_resnet50', {}),
    ('se_resnet18', dict(se_squeeze='none', se_gate='tanh')),
    ('se_resnext50_32x4d', dict(stage_planes=(32, 64, 64, 128), se_position='pre')),
    ('senet154', dict(stage_planes=(16, 32, 32, 64), groups=8, base_width=8, stem_width=16,
                      se_position='identity', drop_path_rate=0.1)),
])
def test_every_parameter_gets_a_nonzero_gradient(name, kw):
  model = tiny(name, **kw)
  zero = params_without_gradient(model)
  assert not zero, f'parameters with zero gradient: {zero}'


def test_batch_stats_update_only_in_train_mode():
  model = tiny()
  variables = init_variables(model)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 3 + 1
  _, updated = jax.jit(model.apply, static_argnames=('train', 'mutable'))(
      variables, x, train=True, mutable=('batch_stats',))
  before = variables['batch_stats']['bn1']['mean']
  assert not np.allclose(updated['batch_stats']['bn1']['mean'], before)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = tiny(dtype=jnp.bfloat16)
  variables = init_variables(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables['params']))
  c = record_calls(model, variables, jnp.ones((2, 32, 32, 3)), [f'{BLOCK}/conv2', 'fc'])
  assert c[f'{BLOCK}/conv2'][1].dtype == jnp.bfloat16
  assert c['fc'][1].dtype == jnp.float32
  fp32 = jax.jit(tiny().apply)(variables, jnp.ones((2, 32, 32, 3)))
  bf16 = jax.jit(model.apply)(variables, jnp.ones((2, 32, 32, 3)))
  np.testing.assert_allclose(bf16, fp32, atol=0.1 * float(jnp.max(jnp.abs(fp32))) + 0.05)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='se_resnet50'):
    create_model('se_resnet51')


@pytest.mark.parametrize('field,value', [
    ('se_position', 'middle'), ('se_gate', 'softmax'), ('se_squeeze', 'sum'),
    ('layout', 'v2'), ('block', 'wide'), ('se_stages', (1,)), ('se_width_rule', 'x'),
    ('conv_impl', 'fast'),
])
def test_bad_knob_value_names_field_and_allowed_values(field, value):
  with pytest.raises(ValueError, match=field) as err:
    create_model('se_resnet50', **{field: value})
  assert 'allowed' in str(err.value)


def test_unknown_override_names_field():
  with pytest.raises(ValueError, match='se_ratio_typo'):
    create_model('se_resnet50', se_ratio_typo=3)


def test_zero_init_last_bn():
  model = tiny(zero_init_last_bn=True)
  params = init_variables(model)['params']
  assert not np.any(np.asarray(params['layer1_0']['bn3']['scale']))
  assert np.all(np.asarray(params['layer1_0']['bn1']['scale']) == 1)

