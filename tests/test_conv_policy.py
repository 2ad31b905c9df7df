"""The convolution policy: read from the environment once (create_model / build_model), then a
pure choice per convolution; the same model on 1 and on N CPU devices."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from senet_jax.models import builder, create_model
from senet_jax.ops import conv_impls, kernels
from senet_jax.ops import policy as policy_lib
from senet_jax.ops.policy import ConvPolicy, select_conv_policy
from senet_jax.utils import xla_flags
from suite_cost import host_devices_env

needs_kernels = pytest.mark.skipif(kernels._compiler() is None, reason='no C++ compiler')
# A ResNeXt small enough to lower in a second: 4 groups of 2-4 channels ('direct' on CPU).
TINY_RESNEXT = dict(stage_sizes=(1, 1, 1, 1), stage_planes=(8, 16, 16, 32), stem_width=8,
                    groups=4, base_width=16)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_select_reads_the_environment_and_builds_kernels_only_where_they_run(monkeypatch):
  builds = []
  monkeypatch.setattr(kernels, 'available', lambda: builds.append(1) or True)
  assert select_conv_policy(backend='cpu', engine='eigen', device_count=1) == ConvPolicy(
      'cpu', 'eigen', kernels=True)
  # several devices: a custom call under a sharded jit would be replicated (module docstring)
  assert select_conv_policy(backend='cpu', engine='ynn', device_count=4) == ConvPolicy(
      'cpu', 'ynn', kernels=False)
  assert not select_conv_policy(backend='gpu', engine='eigen', device_count=1).kernels
  assert len(builds) == 1  # the C++ compiler runs only where the kernels could be used
  assert not select_conv_policy(backend='cpu', engine='eigen', device_count=1,
                                kernels_available=False).kernels
  monkeypatch.setenv('XLA_FLAGS', xla_flags.CPU_CONV_FLAG)
  assert select_conv_policy(backend='cpu', device_count=1).engine == 'eigen'
  monkeypatch.setenv('XLA_FLAGS', '')
  assert select_conv_policy(backend='cpu', device_count=1).engine == 'ynn'  # jaxlib's default


def test_kernels_apply_to_float32_only_and_bad_engine_is_an_error():
  policy = ConvPolicy('cpu', 'eigen', kernels=True)
  assert policy.kernels_apply(jnp.float32, np.dtype('float32'))
  assert not policy.kernels_apply(jnp.bfloat16, jnp.float32)
  assert not ConvPolicy('cpu', 'eigen', kernels=False).kernels_apply(jnp.float32)
  with pytest.raises(ValueError, match='engine'):
    ConvPolicy('cpu', 'oneDNN')


def test_the_default_policy_knows_no_backend_and_runs_xla_everywhere():
  policy = ConvPolicy()
  assert policy.choose('auto', (3, 3, 4, 32), 8) == 'xla'      # grouped
  assert policy.choose('auto', (3, 3, 1, 32), 32) == 'xla'     # depthwise
  assert policy.choose('auto', (1, 1, 32, 64), 1) == 'xla'     # 1x1
  assert policy.choose('direct', (3, 3, 4, 32), 8) == 'direct'  # explicit choices stay
  assert not policy.kernels


def test_create_model_and_build_model_decide_the_policy_once():
  current = select_conv_policy()
  assert create_model('resnet18').conv_policy == current
  assert create_model('mobilenet_v1').conv_policy == current
  assert builder.build_model('efficientnet_b0', num_classes=3).conv_policy == current
  given = ConvPolicy('cpu', 'ynn', kernels=False)
  assert create_model('resnet18', conv_policy=given).conv_policy == given
  assert builder.build_model('resnet18', num_classes=3, conv_policy=given).conv_policy == given


def _lowered(model, size=16):
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  loss = lambda variables, x: model.apply(variables, x).sum()
  return jax.jit(jax.grad(loss)).lower(variables, x).as_text()


def test_tracing_a_model_reads_no_environment(monkeypatch):
  models = [create_model('resnext50_32x4d', num_classes=4, **TINY_RESNEXT),
            create_model('efficientnet_b0', num_classes=4, blocks=('r1_k3_s11_e1_i8_o8_se0.25',
                                                                   'r1_k3_s22_e6_i8_o16_se0.25'),
                         stem_channels=8, head_channels=16)]

  def read(*args, **kwargs):
    raise AssertionError('the environment was read while tracing a model')
  for module, name in ((policy_lib, 'select_conv_policy'), (conv_impls, 'select_conv_policy'),
                       (kernels, 'build'), (xla_flags, 'cpu_conv_engine'),
                       (jax, 'device_count'), (jax, 'default_backend')):
    monkeypatch.setattr(module, name, read)
  for model in models:
    assert 'stablehlo.convolution' in _lowered(model) or 'dot_general' in _lowered(model)


@needs_kernels
def test_the_formulation_is_the_policys():
  def lowered(policy):
    return _lowered(create_model('resnext50_32x4d', num_classes=4, conv_policy=policy,
                                 **TINY_RESNEXT))
  one_device = lowered(ConvPolicy('cpu', 'eigen', kernels=True))
  assert 'senet_grouped_conv_forward' in one_device
  n_devices = lowered(ConvPolicy('cpu', 'eigen', kernels=False))  # 'split': dense convs
  assert 'senet_grouped_conv' not in n_devices and 'feature_group_count = 4' not in n_devices
  assert 'feature_group_count = 4' in lowered(ConvPolicy('gpu', 'eigen'))


SHARDED = r'''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from senet_jax.models import builder, layers
from senet_jax.ops import ConvPolicy, select_conv_policy
assert jax.device_count() == 2, jax.devices()
policy = select_conv_policy()
assert policy.backend == 'cpu' and not policy.kernels, policy
model = builder.build_model('se_resnext50_32x4d', num_classes=4)
assert model.conv_policy == policy
# The model's grouped 3x3 conv (4 input channels per group: 'direct' where kernels run).
def step(policy):
  conv = layers.Conv2d(32, 3, groups=8, policy=policy)
  loss = lambda v, x: (conv.apply(v, x) ** 2).sum()
  return conv, jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
x = jnp.asarray(np.random.RandomState(0).randn(4, 8, 8, 32).astype(np.float32))
conv, sharded = step(policy)
variables = conv.init(jax.random.key(0), x)
xs = jax.device_put(x, NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data')))
assert 'senet_grouped_conv' not in sharded.lower(variables, xs).as_text()
loss, grads = sharded(variables, xs)
# The one-device formulation (C++ kernels) of the same conv, on one device of this process.
_, single = step(ConvPolicy('cpu', policy.engine, kernels=True))
assert 'senet_grouped_conv_forward' in single.lower(variables, x).as_text()
loss1, grads1 = single(variables, x)
np.testing.assert_allclose(loss, loss1, rtol=1e-5)
for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads1)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
print('OK')
'''


@needs_kernels
def test_n_devices_run_the_xla_formulation_with_the_values_of_the_kernels():
  env = host_devices_env(2, PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', SHARDED], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]
