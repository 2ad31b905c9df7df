"""ECA, CBAM and Gather-Excite: NumPy re-implementations of the papers' equations, the one
attention seam (`attn_layer` on every family), and parameter / logit parity with timm."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.models import ATTN_LAYERS, create_model, layers
from senet_jax.models.attention import (CBAM, AttentionConfig, EfficientChannelAttention,
                                        GatherExcite, collect_excitations)
from senet_jax.models.attention.eca import eca_kernel_size

sigmoid = lambda v: 1 / (1 + np.exp(-v))
relu = lambda v: np.maximum(v, 0)


def perturbed(variables, seed=0):
  """Every parameter moved off its init (non-zero biases, BN statistics not 0 / 1)."""
  rng = np.random.RandomState(seed)
  def move(path, leaf):
    names = [getattr(p, 'key', '') for p in path]
    if 'var' in names:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return np.asarray(leaf) + rng.uniform(-0.3, 0.3, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(move, variables)


def numpy_conv2d(x, kernel, stride, pad, groups=1):
  """Direct NHWC cross-correlation with symmetric zero padding `pad` (independent of lax)."""
  n, h, w, c = x.shape
  kh, kw, cin, cout = kernel.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout), np.float64)
  per = cout // groups
  for o in range(cout):
    g = o // per
    for i in range(oh):
      for j in range(ow):
        patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, g * cin:(g + 1) * cin]
        out[:, i, j, o] = np.sum(patch * kernel[..., o], axis=(1, 2, 3))
  return out


def numpy_bn(x, bn, eps=1e-5):
  return (x - bn['mean']) / np.sqrt(bn['var'] + eps) * bn['scale'] + bn['bias']


@pytest.mark.parametrize('channels,expected', [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5),
                                               (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_size(channels, expected):
  # k = |(log2 C + 1) / 2|_odd, by hand: C=128 -> 4 -> 5; C=2048 -> 6 -> 7; C=64 -> 3.5 -> 3.
  assert eca_kernel_size(channels) == expected


def test_eca_matches_paper_equations():
  x = np.random.RandomState(0).randn(2, 5, 4, 128).astype(np.float32)
  module = EfficientChannelAttention(record_name='SE_2_1')
  variables = perturbed(module.init(jax.random.key(0), x))
  w = np.asarray(variables['params']['conv']['kernel'])[:, 0, 0]
  assert w.shape == (5,)  # adaptive size for C = 128
  y = np.pad(x.mean(axis=(1, 2)), ((0, 0), (2, 2)))  # (N, C + 4): zero padded channel axis
  gates = sigmoid(np.stack([y[:, c:c + 5] @ w for c in range(128)], axis=-1))
  out, state = module.apply(variables, x, mutable=['intermediates'])
  np.testing.assert_allclose(out, x * gates[:, None, None, :], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(collect_excitations(state['intermediates'])['SE_2_1'][:, 0, 0],
                             gates, rtol=1e-5, atol=1e-6)


def test_cbam_matches_paper_equations():
  x = np.random.RandomState(1).randn(2, 6, 5, 32).astype(np.float32)
  module = CBAM(reduction=8, record_name='SE_3_2')
  variables = perturbed(module.init(jax.random.key(0), x))
  p, s = variables['params'], variables['batch_stats']
  mlp = lambda z: relu(z @ p['reduce']['kernel'][0, 0] + p['reduce']['bias']) @ \
      p['expand']['kernel'][0, 0] + p['expand']['bias']
  mc = sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))  # eq. 2
  f1 = x * mc[:, None, None, :]
  maps = np.stack([f1.mean(axis=-1), f1.max(axis=-1)], axis=-1)
  conv = numpy_conv2d(maps, np.asarray(p['spatial_conv']['kernel']), 1, 3)
  ms = sigmoid(numpy_bn(conv, {**s['spatial_bn'], **p['spatial_bn']}))  # eq. 3 (+ BN)
  assert p['reduce']['kernel'].shape == (1, 1, 32, 4)
  out, state = module.apply(variables, x, mutable=['intermediates'])
  np.testing.assert_allclose(out, f1 * ms, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state['intermediates']['SE_3_2'][0][:, 0, 0], mc, rtol=1e-5)


def test_effective_se_matches_paper_equations():
  x = np.random.RandomState(4).randn(2, 3, 4, 16).astype(np.float32)
  module = ATTN_LAYERS['ese']()
  variables = perturbed(module.init(jax.random.key(0), x))
  p = variables['params']['fc']
  gates = np.clip(x.mean(axis=(1, 2)) @ p['kernel'][0, 0] + p['bias'] + 3, 0, 6) / 6
  np.testing.assert_allclose(module.apply(variables, x), x * gates[:, None, None, :],
                             rtol=1e-5, atol=1e-6)


def numpy_avg_pool_no_pad_count(x, window, stride, pad):
  n, h, w, c = x.shape
  oh, ow = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      r0, c0 = i * stride - pad, j * stride - pad
      cell = x[:, max(r0, 0):r0 + window, max(c0, 0):c0 + window]
      out[:, i, j] = cell.mean(axis=(1, 2))
  return out


def nearest(g, h, w):
  rows = [int(np.floor(i * g.shape[1] / h)) for i in range(h)]
  cols = [int(np.floor(j * g.shape[2] / w)) for j in range(w)]
  return g[:, rows][:, :, cols]


@pytest.mark.parametrize('extent', [0, 2, 4])
def test_gather_excite_parameter_free_matches_paper(extent):
  x = np.random.RandomState(2).randn(2, 7, 6, 8).astype(np.float32)
  module = GatherExcite(extent=extent)
  assert 'params' not in module.init(jax.random.key(0), x)  # GE-theta-minus has no parameters
  if extent == 0:
    gathered = x.mean(axis=(1, 2), keepdims=True)
  else:
    gathered = numpy_avg_pool_no_pad_count(x, 2 * extent - 1, extent, extent - 1)
    assert gathered.shape[1:3] == (-(-7 // extent), -(-6 // extent))
  expected = x * nearest(sigmoid(gathered), 7, 6)
  np.testing.assert_allclose(module.apply({}, x), expected, rtol=1e-5, atol=1e-6)


def test_gather_excite_parametric_and_mlp_match_paper():
  x = np.random.RandomState(3).randn(2, 8, 8, 16).astype(np.float32)
  module = GatherExcite(extent=4, extra_params=True, use_mlp=True, reduction=4)
  variables = perturbed(module.init(jax.random.key(0), x))
  p, s = variables['params'], variables['batch_stats']
  g = x
  for i in (1, 2):  # log2(4) depthwise 3x3 stride-2 convs, BN, ReLU between them
    g = numpy_conv2d(g, np.asarray(p[f'gather_conv{i}']['kernel']), 2, 1, groups=16)
    g = numpy_bn(g, {**s[f'gather_bn{i}'], **p[f'gather_bn{i}']})
    g = relu(g) if i == 1 else g
  g = relu(g @ p['reduce']['kernel'][0, 0] + p['reduce']['bias']) @ p['expand']['kernel'][0, 0]
  g = g + p['expand']['bias']
  expected = x * nearest(sigmoid(g), 8, 8)
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


# One family per attention type (each family builds its attention through the same seam).
@pytest.mark.parametrize('attn,name', [('se', 'se_mobilenet_v1'), ('eca', 'efficientnet_b0'),
                                       ('ese', 'se_shufflenet_v1_g3'),
                                       ('cbam', 'mobilenetv3_small_100'),
                                       ('gather_excite', 'se_vgg11'), ('eca', 'se_resnet18')])
def test_every_family_takes_an_attention_layer(attn, name):
  model = create_model(name, num_classes=10, attn_layer=attn, se=True,
                       attn_kwargs={'extent': 2} if attn == 'gather_excite' else None)
  x = jnp.zeros((1, 32, 32, 3))

  def run():
    variables = model.init(jax.random.key(0), x)
    return variables, model.apply(variables, x, mutable=['intermediates'])[1]
  variables, state = jax.eval_shape(run)
  blocks = [str(path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
  cls = ATTN_LAYERS[attn]
  if attn != 'gather_excite':  # GE-theta-minus has no parameters
    assert any("'se" in b for b in blocks)
  gates = collect_excitations(state['intermediates'])
  assert gates and all(k.startswith('SE_') for k in gates), cls


def test_attention_config_errors_name_the_field():
  with pytest.raises(ValueError, match='attn_layer'):
    create_model('se_resnet50', attn_layer='nope')
  with pytest.raises(ValueError, match=r"attn_kwargs \['extnt'\]"):
    create_model('se_resnet50', attn_layer='gather_excite', attn_kwargs={'extnt': 2})
  with pytest.raises(ValueError, match='extent'):
    GatherExcite(extent=3)
  assert AttentionConfig(layer=None).make(2, 1) is None
  assert AttentionConfig(stages=(3,)).make(2, 1) is None
  assert AttentionConfig().make(3, 2).keywords['record_name'] == 'SE_3_2'


# --- timm parity: timm's ResNet with `attn_layer` (`block_args`) through the converter ---
torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from timm.layers import GatherExcite as TimmGE  # noqa: E402
from tests.test_convert import compare, randomised_timm  # noqa: E402

# attention -> (timm attn_layer, senet_jax overrides). timm's CBAM MLP has no biases. timm
# 1.0.31's GatherExcite fails to construct with extra_params=True or use_mlp=True (it passes
# its device/dtype dict positionally), so GE-theta / GE-theta-plus are checked against NumPy
# only and timm parity covers the parameter-free GE-theta-minus with extent 2.
PARITY = {
    'eca': ('eca', dict(attn_layer='eca')),
    'ese': ('ese', dict(attn_layer='ese', se_gate='hard_sigmoid')),  # the model's gate knob
    'cbam': ('cbam', dict(attn_layer='cbam', se_bias=False)),
    'ge_extent2': (functools.partial(TimmGE, extent=2, use_mlp=False),
                   dict(attn_layer='gather_excite', attn_kwargs={'extent': 2})),
}


@pytest.mark.parametrize('attn', sorted(PARITY))
def test_parameter_count_equals_timm(attn):
  timm_attn, overrides = PARITY[attn]
  reference = timm.create_model('resnet50', block_args=dict(attn_layer=timm_attn))
  expected = sum(p.numel() for p in reference.parameters())
  model = create_model('resnet50', layout='v1.5', se=True, **overrides)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert layers.count_params(abstract['params']) == expected


@pytest.mark.parametrize('attn', sorted(PARITY))
def test_logit_parity_with_timm(attn):
  from senet_jax.convert import timm as timm_convert
  timm_attn, overrides = PARITY[attn]
  reference = randomised_timm('resnet50', layers=[1, 1, 1, 1],
                              block_args=dict(attn_layer=timm_attn))
  images = np.random.RandomState(0).rand(2, 64, 64, 3).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  model, variables = timm_convert.from_timm(state, 'resnet50', se=True,
                                            stage_sizes=(1, 1, 1, 1), **overrides)
  compare(expected, model.apply(variables, images))
