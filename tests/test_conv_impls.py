"""Every grouped/depthwise convolution formulation equals lax.conv_general_dilated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.ops import conv_impls
from senet_jax.ops.policy import ConvPolicy

CASES = [  # (impl, channels_in, channels_out, groups, kernel, stride, padding, size)
    ('shift', 8, 8, 8, 3, 1, 'SAME', 9),
    ('shift', 8, 8, 8, 5, 2, 'SAME', 10),    # TF SAME, asymmetric
    ('shift', 8, 8, 8, 3, 2, ((1, 1), (1, 1)), 9),
    ('shift', 4, 8, 4, 3, 1, 'SAME', 6),     # depth multiplier 2
    ('shift', 8, 8, 8, 3, 2, 'VALID', 10),   # an unused last row and column (gradient 0)
    ('shift', 8, 8, 8, 5, 2, 'VALID', 10),   # the same with the gather-form input gradient
    ('shift', 8, 8, 8, 5, 1, ((2, 1), (0, 3)), 7),  # uneven explicit padding
    ('dense', 8, 16, 4, 3, 1, ((1, 1), (1, 1)), 7),
    ('dense', 16, 16, 8, 3, 2, ((1, 1), (1, 1)), 8),
    ('dense', 8, 8, 8, 3, 2, 'SAME', 7),      # depthwise as dense also correct
    ('split', 128, 128, 32, 3, 1, ((1, 1), (1, 1)), 5),  # 32x4d: 8 slices of 4 groups
    ('split', 64, 128, 4, 3, 2, 'SAME', 6),    # 16 channels per group: 4 dense slices
    ('split', 96, 48, 6, 3, 1, ((1, 1), (1, 1)), 4),   # 16 per group: 6 separate dense convs
    ('direct', 128, 128, 32, 3, 1, ((1, 1), (1, 1)), 5),  # 32x4d: C++ kernels, 2 channel tiles
    ('direct', 48, 96, 4, 3, 1, 'SAME', 6),    # 12 in / 24 out per group, a partial tile
    ('direct', 64, 64, 16, 3, 1, ((0, 2), (2, 0)), 5),  # asymmetric padding
    ('direct', 64, 128, 8, 5, 1, 'VALID', 7),
    ('direct', 64, 64, 4, 3, 1, ((1, 1), (1, 1)), 9),  # 16 out per group: broadcast form
    ('direct', 24, 256, 8, 3, 1, 'SAME', 5),   # 3 in / 32 out per group, broadcast form
    ('direct', 128, 128, 16, 3, 1, 'SAME', 6),  # 8 per group: broadcast with 8-wide vectors
    ('direct', 256, 256, 16, 3, 1, 'SAME', 4),  # weight gradient split by groups (large kernel)
    ('direct', 64, 64, 16, 3, 2, 'SAME', 6),   # strided: falls back to 'split'
    ('direct', 8, 8, 8, 3, 1, 'SAME', 6),      # depthwise: one channel per group
    ('matmul', 8, 16, 1, 1, 1, 'SAME', 7),    # 1x1 as a channel contraction
    ('matmul', 8, 16, 1, 1, 2, ((0, 0), (0, 0)), 8),  # strided 1x1 (ResNet projections)
    ('matmul', 8, 16, 1, 1, 2, 'SAME', 7),
    ('im2col', 8, 16, 1, 3, 1, ((1, 1), (1, 1)), 2),  # 3x3 on a 2x2 map
    ('im2col', 8, 16, 1, 3, 2, 'SAME', 5),
    ('im2col', 8, 16, 1, 5, 1, 'SAME', 3),
    ('im2col_grad', 8, 16, 1, 3, 1, ((1, 1), (1, 1)), 6),
    ('im2col_grad', 8, 16, 1, 3, 2, 'SAME', 7),      # strided, TF SAME
    ('im2col_grad', 3, 8, 1, (1, 7), 1, ((0, 0), (3, 3)), 8),  # rectangular (Inception)
]


@pytest.mark.parametrize('impl,cin,cout,groups,k,stride,padding,size', CASES)
def test_forward_and_gradients_match_xla(impl, cin, cout, groups, k, stride, padding, size):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, size, size, cin).astype(np.float32))
  kh, kw = (k, k) if isinstance(k, int) else k
  w = jnp.asarray(rng.randn(kh, kw, cin // groups, cout).astype(np.float32))
  ref = lambda x, w: conv_impls.conv_xla(x, w, stride, padding, groups)
  alt = lambda x, w: conv_impls.conv(x, w, stride, padding, groups, impl)
  np.testing.assert_allclose(jax.jit(alt)(x, w), jax.jit(ref)(x, w), rtol=1e-4, atol=1e-4)
  probe = jnp.asarray(rng.randn(*ref(x, w).shape).astype(np.float32))
  grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), argnums=(0, 1)))
  for g_alt, g_ref in zip(grad(alt)(x, w), grad(ref)(x, w)):
    np.testing.assert_allclose(g_alt, g_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('k,stride,padding,size', [
    (3, 1, 'SAME', 9), (3, 2, 'SAME', 10), (5, 2, 'SAME', 11), (5, 1, ((2, 1), (0, 3)), 7),
    (3, 2, 'VALID', 10), (5, 2, ((2, 2), (2, 2)), 11), (3, 2, ((0, 1), (0, 1)), 8)])
def test_depthwise_input_gradient_in_gather_form_equals_autodiff_of_xla(k, stride, padding, size):
  """dy dilated by the stride, padded, one stride-1 pass of the flipped kernel = XLA's dx."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, size, size + 1, 4).astype(np.float32))
  w = jnp.asarray(rng.randn(k, k, 1, 4).astype(np.float32))
  pads = conv_impls._pads(x.shape, w.shape, stride, padding)
  y, vjp = jax.vjp(lambda x: conv_impls.conv_xla(x, w, stride, pads, 4), x)
  dy = jnp.asarray(rng.randn(*y.shape).astype(np.float32))
  dx = conv_impls.conv_shift_input_grad(dy, w, stride, pads, x.shape)
  np.testing.assert_allclose(dx, vjp(dy)[0], rtol=1e-5, atol=1e-5)


def resolve(impl, groups, cin, *, backend='cpu', engine='eigen', k=3, size=1 << 15, cout=None):
  """The formulation `ConvPolicy.choose` picks for a k x k conv on size x size inputs."""
  policy = ConvPolicy(backend=backend, engine=engine)
  return policy.choose(impl, (k, k, cin // groups, cout or cin), groups, (size, size))


def test_auto_resolves_per_backend():
  for engine in ('eigen', 'ynn'):
    assert resolve('auto', 32, 32, engine=engine) == 'shift'
    assert resolve('auto', 32, 128, engine=engine) == 'direct'  # 4 per group
    assert resolve('auto', 32, 256, engine=engine) == 'direct'  # 8 per group
    assert resolve('auto', 32, 512, engine=engine) == 'direct'  # 16 per group
    assert resolve('auto', 4, 48, engine=engine) == 'split'     # 12 per group
    assert resolve('auto', 1, 128, k=1, engine=engine) == 'matmul'
    # maps no larger than the kernel leave both engines' fast path
    assert resolve('auto', 1, 128, k=3, size=2, engine=engine) == 'im2col'
  assert resolve('auto', 32, 128, backend='gpu') == 'xla'
  assert resolve('auto', 1, 64, backend='gpu') == 'xla'
  assert resolve('auto', 1, 128, backend='gpu', k=1) == 'xla'


def test_auto_dense_kxk_on_eigen_is_xla():
  for cin, k, size in ((3, 7, 224), (3, 3, 224), (64, 3, 56), (512, 3, 7), (128, 3, 8)):
    assert resolve('auto', 1, cin, k=k, size=size, engine='eigen') == 'xla'


def test_auto_dense_kxk_on_ynnpack_uses_im2col_weight_gradients():
  ynn = lambda cin, **kw: resolve('auto', 1, cin, engine='ynn', **kw)
  assert ynn(256, size=14) == 'xla'
  assert ynn(128, size=8) == 'xla'
  assert ynn(128, size=28) == 'im2col_grad'
  assert ynn(64) == 'im2col_grad'  # <= 64 input channels
  assert ynn(512, size=7) == 'im2col_grad'
  assert ynn(3) == 'im2col'  # 3x3 stems
  assert ynn(3, k=7) == 'im2col_grad'  # 7x7 stems
  assert ynn(128, k=3, size=8) == 'xla'


def test_split_factor_merges_groups_to_about_16_channels():
  assert conv_impls.split_factor(32, 128) == 4     # 4 channels per group -> 4 groups per slice
  assert conv_impls.split_factor(32, 256) == 2
  assert conv_impls.split_factor(32, 1024) == 1    # 32 per group: separate dense convs
  assert conv_impls.split_factor(6, 12) == 6       # 2 per group: 8 would not divide 6 -> 6
  assert conv_impls.split_factor(3, 30) == 1       # 10 per group


def test_shift_rejects_non_depthwise_and_unknown_impl():
  with pytest.raises(ValueError, match='depthwise'):
    resolve('shift', 4, 16)
  with pytest.raises(ValueError, match='conv_impl'):
    resolve('winograd', 4, 16)


def test_channel_matmul_gradients_in_bfloat16_keep_dtype_and_match_float32():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 5, 5, 8).astype(np.float32))
  w = jnp.asarray(rng.randn(8, 4).astype(np.float32))
  loss = lambda x, w: jnp.sum(conv_impls.channel_matmul(x, w).astype(jnp.float32) ** 2)
  ref = jax.grad(loss, argnums=(0, 1))(x, w)
  auto = jax.grad(lambda x, w: jnp.sum(jnp.einsum('nhwc,co->nhwo', x, w) ** 2),
                  argnums=(0, 1))(x, w)
  for a, b in zip(ref, auto):                        # the hand-written VJP is autodiff's
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  low = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert [g.dtype for g in low] == [jnp.bfloat16, jnp.bfloat16]
  for a, b in zip(low, ref):
    np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0.05, atol=0.5)


def test_shift_traces_one_multiply_add_per_tap_and_no_nested_jit():
  # A 5x5 depthwise conv is 25 taps: 25 products summed by 24 adds, written with lax so that
  # tracing binds them directly (jnp's operators each trace as a nested jit: B7 has ~1,100 taps).
  jaxpr = jax.make_jaxpr(lambda x, k: conv_impls._conv_shift(x, k, 1, ((2, 2), (2, 2))))(
      jnp.zeros((1, 9, 9, 4)), jnp.zeros((5, 5, 1, 4)))
  names = [eqn.primitive.name for eqn in jaxpr.eqns]
  assert (names.count('mul'), names.count('add')) == (25, 24)
  assert not {'jit', 'pjit'} & set(names)


def test_shift_promotes_mixed_dtypes_like_jnp():
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4)).astype(jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
  out = conv_impls._conv_shift(x, kernel, 1, ((1, 1), (1, 1)))
  assert out.dtype == jnp.float32
  ref = conv_impls.conv_xla(x.astype(jnp.float32), kernel, 1, ((1, 1), (1, 1)), 4)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
