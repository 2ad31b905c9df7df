"""The SE block against a NumPy re-implementation of the paper's equations, and its knobs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.models import squeeze_excite as se_lib


def numpy_se(x, params, squeeze, gate, act):
  """Paper eq. 2-4 written independently: z = squeeze(U); s = gate(W2 act(W1 z + b1) + b2)."""
  if squeeze == 'avg':
    z = x.mean(axis=(1, 2), keepdims=True)
  elif squeeze == 'max':
    z = x.max(axis=(1, 2), keepdims=True)
  else:
    z = x
  w1 = np.asarray(params['reduce']['kernel'])[0, 0]
  b1 = np.asarray(params['reduce']['bias'])
  w2 = np.asarray(params['expand']['kernel'])[0, 0]
  b2 = np.asarray(params['expand']['bias'])
  acts = {'relu': lambda v: np.maximum(v, 0), 'swish': lambda v: v / (1 + np.exp(-v))}
  gates = {'sigmoid': lambda v: 1 / (1 + np.exp(-v)), 'tanh': np.tanh,
           'relu': lambda v: np.maximum(v, 0), 'hard_sigmoid': lambda v: np.clip(v + 3, 0, 6) / 6}
  h = acts[act](z @ w1 + b1)
  s = gates[gate](h @ w2 + b2)
  return x * s, s


@pytest.mark.parametrize('squeeze', ['avg', 'max', 'none'])
@pytest.mark.parametrize('gate', ['sigmoid', 'tanh', 'relu', 'hard_sigmoid'])
def test_se_matches_paper_equations(squeeze, gate):
  x = np.random.RandomState(0).randn(2, 5, 4, 32).astype(np.float32)
  module = se_lib.SqueezeExcite(reduction=4, squeeze=squeeze, gate=gate, act='relu',
                                record_name='SE_2_1')
  variables = module.init(jax.random.key(1), x)
  # Non-zero biases so that a missing bias would be noticed.
  params = jax.tree_util.tree_map(lambda p: p + 0.1, variables['params'])
  out, state = module.apply({'params': params}, x, mutable=['intermediates'])
  expected, gates = numpy_se(x, params, squeeze, gate, 'relu')
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  recorded = se_lib.collect_excitations(state['intermediates'])
  assert list(recorded) == ['SE_2_1']
  np.testing.assert_allclose(recorded['SE_2_1'], gates, rtol=1e-5, atol=1e-6)
  expected_shape = (2, 5, 4, 32) if squeeze == 'none' else (2, 1, 1, 32)
  assert recorded['SE_2_1'].shape == expected_shape


def test_se_swish_inner_activation_and_no_bias():
  x = np.random.RandomState(1).randn(3, 4, 4, 16).astype(np.float32)
  module = se_lib.SqueezeExcite(reduction=4, act='swish', use_bias=False)
  variables = module.init(jax.random.key(0), x)
  assert set(variables['params']['reduce']) == {'kernel'}
  params = {k: {'kernel': v['kernel'], 'bias': np.zeros(v['kernel'].shape[-1], np.float32)}
            for k, v in variables['params'].items()}
  expected, _ = numpy_se(x, params, 'avg', 'sigmoid', 'swish')
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('channels,r,rule,expected', [
    (256, 16, 'floor', 16),      # SENet: C // r
    (100, 16, 'floor', 6),
    (100, 16, 'divisible', 8),   # timm make_divisible(6.25, 8)
    (64, 16, 'divisible', 8),    # never below the divisor
    (100, 16, 'round', 6),
    (40, 4, 'floor', 10),        # EfficientNet: int(40 * 0.25)
])
def test_reduced_width_rules(channels, r, rule, expected):
  assert se_lib.reduced_width(channels, r, rule) == expected


def test_width_base_sets_bottleneck_from_other_channels():
  x = jnp.ones((1, 2, 2, 96))
  module = se_lib.SqueezeExcite(reduction=4, width_base=16, act='swish')
  params = module.init(jax.random.key(0), x)['params']
  assert params['reduce']['kernel'].shape == (1, 1, 96, 4)
  assert params['expand']['kernel'].shape == (1, 1, 4, 96)


@pytest.mark.parametrize('field,kwargs', [
    ('se_squeeze', dict(squeeze='median')),
    ('se_gate', dict(gate='softmax')),
    ('se_act', dict(act='nope')),
    ('se_width_rule', dict(width_rule='ceil')),
    ('se_reduction', dict(reduction=0)),
])
def test_invalid_knob_names_the_field(field, kwargs):
  with pytest.raises(ValueError, match=field):
    se_lib.SqueezeExcite(**kwargs)


def test_make_divisible_never_more_than_ten_percent_down():
  # Nearest multiple of 8 to 19 is 16, 16% down, so the 0.9 rule bumps it to 24.
  assert se_lib.make_divisible(19, 8) == 24
  assert se_lib.make_divisible(11, 8) == 16
  assert se_lib.make_divisible(35.2, 8) == 32
  assert se_lib.make_divisible(1408, 8) == 1408
