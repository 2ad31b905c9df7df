"""The hand-written CPU kernels (senet_jax/ops/kernels): values against XLA's own convolution
gradient, use inside `conv_shift`, and a build that fails cleanly."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.ops import kernels
from senet_jax.ops import conv_impls

needs_kernels = pytest.mark.skipif(kernels._compiler() is None, reason='no C++ compiler')


def _reference_weight_grad(x, dy, k, strides, pads):
  """Autodiff of lax.conv_general_dilated(feature_group_count=C): the independent reference."""
  w = jnp.zeros((k, k, 1, x.shape[-1]), jnp.float32)
  _, vjp = jax.vjp(lambda w: conv_impls.conv_xla(x, w, strides, pads, x.shape[-1]), w)
  return vjp(dy)[0][:, :, 0, :]


@needs_kernels
def test_kernels_build_and_register_where_a_compiler_exists():
  assert kernels.available()


# (batch, height, width, channels, kernel, stride, padding): odd sizes, channel counts that are
# not a multiple of the vector width, TF-SAME's asymmetric pads, fewer rows than work chunks.
CASES = [(2, 9, 11, 5, 3, 1, 'SAME'), (2, 9, 11, 33, 3, 2, 'SAME'), (3, 8, 8, 7, 5, 2, 'SAME'),
         (1, 3, 3, 16, 3, 1, 'SAME'), (2, 10, 6, 24, 5, 1, ((2, 2), (2, 2))),
         (2, 7, 7, 8, 3, 2, ((0, 1), (1, 0))), (4, 12, 12, 40, 3, 1, 'VALID')]


@needs_kernels
@pytest.mark.parametrize('n,h,w,c,k,strides,padding', CASES)
def test_depthwise_weight_grad_matches_xla(n, h, w, c, k, strides, padding):
  x = jax.random.normal(jax.random.key(0), (n, h, w, c))
  pads = tuple(tuple(p) for p in conv_impls._pads(x.shape, (k, k), strides, padding))
  out_shape = jax.eval_shape(lambda x: conv_impls.conv_xla(
      x, jnp.zeros((k, k, 1, c)), strides, pads, c), x).shape
  dy = jax.random.normal(jax.random.key(1), out_shape)
  got = jax.jit(lambda x, dy: kernels.depthwise_weight_grad(x, dy, (k, k), strides, pads))(x, dy)
  np.testing.assert_allclose(got, _reference_weight_grad(x, dy, k, strides, pads),
                             rtol=1e-5, atol=1e-4)


def _shift_grad_hlo(dtype=jnp.float32):
  x = jnp.ones((2, 8, 8, 4), dtype)
  w = jnp.ones((3, 3, 1, 4), dtype)
  grad = jax.grad(lambda w: conv_impls.conv_shift(x, w, 1, 'SAME').sum())
  return jax.jit(grad).lower(w).as_text()


@needs_kernels
def test_conv_shift_uses_the_kernel_for_float32_only():
  assert kernels.TARGET in _shift_grad_hlo()
  assert kernels.TARGET not in _shift_grad_hlo(jnp.bfloat16)


def test_conv_shift_keeps_xla_formulation_without_kernels(monkeypatch):
  monkeypatch.setattr(kernels, 'available', lambda: False)
  assert kernels.TARGET not in _shift_grad_hlo()


def test_failed_build_raises_and_leaves_no_library(tmp_path, monkeypatch):
  monkeypatch.setenv('SENET_KERNEL_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', 'false')  # a "compiler" that always fails
  with pytest.raises(RuntimeError, match='depthwise_cpu.cc'):
    kernels.build()
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.so')]


@needs_kernels
def test_direct_grouped_conv_runs_the_kernels_at_stride_one_only():
  x = jnp.ones((2, 8, 8, 32))
  w = jnp.ones((3, 3, 4, 32))

  def hlo(strides):
    loss = lambda x, w: conv_impls.conv(x, w, strides, 'SAME', 8, 'direct').sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).as_text()
  text = hlo(1)
  assert text.count('senet_grouped_conv_forward') == 2  # forward and input gradient
  assert 'senet_grouped_conv_weight_grad' in text
  assert 'senet_grouped_conv' not in hlo(2)


def test_calling_a_kernel_without_them_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(kernels, 'available', lambda: False)
  with pytest.raises(RuntimeError, match='CPU kernels are not available'):
    kernels.grouped_conv_forward(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 2, 8)), ((1, 1), (1, 1)))


def test_the_build_is_keyed_by_contents_not_by_where_the_sources_sit(tmp_path, monkeypatch):
  """Two checkouts (or an installed copy) of the same sources share one library; a changed
  source, compiler or flag builds another."""
  monkeypatch.setenv('SENET_KERNEL_CACHE', str(tmp_path / 'cache'))
  here = kernels._cache_path('/usr/bin/c++')
  copy = tmp_path / 'elsewhere'
  shutil.copytree(kernels.HERE, copy, ignore=shutil.ignore_patterns('__pycache__'))
  monkeypatch.setattr(kernels, 'HERE', str(copy))
  assert kernels._cache_path('/usr/bin/c++') == here
  assert kernels._cache_path('/usr/bin/clang++') != here
  flags = kernels.CXXFLAGS
  monkeypatch.setattr(kernels, 'CXXFLAGS', flags + ('-march=native',))
  assert kernels._cache_path('/usr/bin/c++') != here
  monkeypatch.setattr(kernels, 'CXXFLAGS', flags)
  with open(copy / kernels.SOURCES[0], 'a') as f:
    f.write('\n// changed\n')
  assert kernels._cache_path('/usr/bin/c++') != here
