"""The data x fsdp mesh: its sizes, the fsdp rule, config errors, and fsdp == data parallel."""
import json
import os
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec as P

from configs import default
from senet_jax.training import sharding
from senet_jax.training.validate import ConfigError, validate_config
from suite_cost import host_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT_CPUS = host_devices_env(8)


def test_mesh_shape_fills_the_rest_of_the_devices():
  assert sharding.resolve_mesh_shape(-1, 1, 8) == (8, 1)
  assert sharding.resolve_mesh_shape(2, -1, 8) == (2, 4)
  assert sharding.resolve_mesh_shape(-1, 8, 64) == (8, 8)
  assert sharding.resolve_mesh_shape(1, 8, 8) == (1, 8)


@pytest.mark.parametrize('data,fsdp,devices,match', [
    (-1, 3, 8, r'config.mesh_fsdp=3 does not divide the device count \(8\)'),
    (3, -1, 8, r'config.mesh_data=3 does not divide'),
    (-1, -1, 8, 'both -1'),
    (2, 2, 8, r'= 4 devices, but there are 8'),
    (-1, 0, 8, r'config.mesh_fsdp=0: must be a positive'),
])
def test_bad_mesh_sizes_name_the_field(data, fsdp, devices, match):
  with pytest.raises(sharding.MeshError, match=match):
    sharding.resolve_mesh_shape(data, fsdp, devices)


def _config(**kw):
  c = default.get_config()
  c.update(dict(model='se_resnet18', num_epochs=1.0, batch_size=16, eval_batch_size=16))
  c.update(kw)
  return c


def test_validate_config_rejects_bad_meshes_before_compute(tmp_path, digits_dir):
  with pytest.raises(ConfigError, match=r'config.mesh_fsdp=3 does not divide'):
    validate_config(_config(mesh_fsdp=3), str(tmp_path), 8, 1)
  # 8 devices split 12 examples unevenly: the mesh sizes are named.
  with pytest.raises(ConfigError, match=r'config.batch_size=12 cannot be split over the mesh '
                                        r'config.mesh_data=2 x config.mesh_fsdp=4'):
    validate_config(_config(mesh_data=2, mesh_fsdp=-1, batch_size=12), str(tmp_path), 8, 1)
  with pytest.raises(ConfigError, match=r'config.batch_size=16 .* in 4 micro-batches: it must '
                                        r'be a multiple of 32'):
    validate_config(_config(mesh_fsdp=8, grad_accum_steps=4), str(tmp_path), 8, 1)
  # A valid one passes (on a prepared dataset: validate_config also opens the splits).
  validate_config(_config(mesh_fsdp=8, dataset='senet_digits', data_dir=digits_dir,
                          eval_split='test', num_classes=10, image_size=32), str(tmp_path), 8, 1)


F8 = ('fsdp_0', 'fsdp_1', 'fsdp_2')  # fsdp=8 is laid out as three mesh axes of 2


@pytest.mark.parametrize('shape,size,splits', [
    ((3, 3, 64, 128), 8, (1, 1, 1, 8)),         # largest dim: output channels
    ((3, 3, 256, 128), 8, (1, 1, 8, 1)),        # largest dim: input channels
    ((2048, 1000), 8, (8, 1)),                  # classifier kernel
    ((1000,), 8, (8,)),                         # 1000 = 8 * 125
    ((1000,), 16, (8,)),                        # not divisible: the 8 of 16 that divide it
    ((3, 3, 1, 36), 8, (1, 1, 1, 4)),           # 36 = 4 * 9: 4-way, replicated over a 2
    ((3, 3, 1, 36), 4, (1, 1, 1, 4)),
    ((7, 7, 3, 64), 1, (1, 1, 1, 1)),           # fsdp=1: everything replicated
    ((), 8, ()),                                # scalars (step counts)
    ((3, 3, 1, 35), 8, (1, 1, 1, 1)),           # no factor of 8 divides 35: replicated
    ((12, 18), 12, (12, 1)),                    # one dim divisible by N beats splitting 18
    # EfficientNet-B8 widths at fsdp=64 (= 2^6): no dim is divisible by 64, so the dims,
    # largest first, take the powers of two that divide them: 2544 = 16 * 159, 424 = 8 * 53.
    ((1, 1, 2544, 424), 64, (1, 1, 16, 4)),     # 64-way over two dims
    ((1, 1, 2544, 106), 64, (1, 1, 16, 2)),     # 106 = 2 * 53: 32-way, the best even split
    ((5, 5, 1, 2544), 64, (1, 1, 1, 16)),       # depthwise kernel
])
def test_fsdp_rule_by_hand(shape, size, splits):
  assert sharding.fsdp_splits(shape, size) == splits


@pytest.mark.parametrize('shape,size,spec', [
    ((3, 3, 64, 128), 8, P(None, None, None, F8)),
    ((2048, 1000), 8, P(F8, None)),
    ((1000,), 16, P(('fsdp_0', 'fsdp_1', 'fsdp_2'))),
    ((3, 3, 1, 36), 8, P(None, None, None, ('fsdp_0', 'fsdp_1'))),
    ((2544, 106), 64, P(('fsdp_0', 'fsdp_1', 'fsdp_2', 'fsdp_3'), 'fsdp_4')),
    ((3, 3, 64, 9), 3, P(None, None, None, 'fsdp')),  # a prime size stays one axis 'fsdp'
    ((7, 7, 3, 64), 1, P(None, None, None, None)),
    ((), 8, P()),
])
def test_fsdp_spec_names_the_factored_mesh_axes(shape, size, spec):
  assert sharding.fsdp_spec(shape, size) == spec


def test_fsdp_axis_is_factored_into_primes():
  assert sharding.fsdp_factors(1) == (('fsdp',), (1,))
  assert sharding.fsdp_factors(7) == (('fsdp',), (7,))
  assert sharding.fsdp_factors(8) == (F8, (2, 2, 2))
  assert sharding.fsdp_factors(12) == (('fsdp_0', 'fsdp_1', 'fsdp_2'), (2, 2, 3))
  assert sharding.fsdp_factors(64)[1] == (2,) * 6


def test_fsdp_rule_keeps_small_leaves_replicated_below_min_size():
  assert sharding.fsdp_spec((64,), 8, min_size=1024) == P(None)
  assert sharding.fsdp_spec((64, 64), 8, min_size=1024) == P(None, F8)


def _run_helper(*args):
  out = subprocess.run([sys.executable, 'tests/helpers/fsdp_vs_data.py', *args], cwd=ROOT,
                       env=EIGHT_CPUS, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _check_equal_to_data_parallel(result, name):
  r = result[name]
  assert abs(r['loss'] - result['loss_data8']) < 1e-5
  # Same global batch -> same BN statistics and update, up to float summation order.
  assert r['params'] < 1e-5 * max(result['param_scale'], 1.0)
  assert r['opt_state'] < 1e-4 and r['batch_stats'] < 1e-5 and r['ema'] < 1e-5


def _check_specs(specs):
  # Hand-written expectations for the tiny SE-ResNet-18 (widths 8/16/16/32, 10 classes):
  # [shape, ways each dimension is split] (the mesh axes behind them: test_fsdp_spec_*).
  assert specs[".params['conv1']['kernel']"] == [[7, 7, 3, 8], [1, 1, 1, 8]]
  assert specs[".params['fc']['kernel']"] == [[32, 10], [8, 1]]
  assert specs[".params['fc']['bias']"] == [[10], [2]]  # 10 = 2 * 5: 2 of the 8 ways
  assert specs[".params['layer1_0']['se']['reduce']['kernel']"] == [[1, 1, 8, 1],
                                                                   [1, 1, 8, 1]]
  assert specs[".batch_stats['bn1']['mean']"] == [[8], [8]]
  assert specs['.step'] == [[], []] and set(specs['.rng'][1]) <= {1}  # never split
  # Optimizer state and EMA leaves follow their parameter's sharding.
  for path, (shape, spec) in specs.items():
    if path.startswith('.params'):
      assert specs['.ema_params' + path[len('.params'):]] == [shape, spec], path
      assert specs['.opt_state[0].trace' + path[len('.params'):]] == [shape, spec], path


@pytest.mark.slow  # ~100 s of CPU: two 8-device compiles in a subprocess
def test_fsdp8_equals_data_parallel_and_shards_by_the_rule():
  result = _run_helper('sgd', 'fsdp8')
  _check_equal_to_data_parallel(result, 'fsdp8')
  _check_specs(result['fsdp8']['specs'])


@pytest.mark.slow
def test_2d_mesh_and_lars_equal_data_parallel():
  for optimizer in ('sgd', 'lars'):
    result = _run_helper(optimizer, 'fsdp8,data2_fsdp4')
    _check_equal_to_data_parallel(result, 'fsdp8')
    _check_equal_to_data_parallel(result, 'data2_fsdp4')
