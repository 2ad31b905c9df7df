"""Operating on a pod: multi-slice meshes, MFU and throughput per device, profiling, W&B.

No TPU here: the multi-slice layout is checked on fake device objects carrying what TPU
devices carry (id, slice_index, coords, core_on_chip, platform, device_kind, process_index),
and the elastic restore on 8 simulated CPU devices wrapped with a slice_index.
"""
import glob
import json
import logging
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from senet_jax.training import mfu, profiling, progress, sharding, writers
from suite_cost import host_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeDevice:
  """What mesh_utils reads from a TPU / GPU device."""

  def __init__(self, id, slice_index=None, coords=(0, 0, 0), kind='TPU v4', process_index=0,
               platform='tpu'):
    self.id, self.coords, self.core_on_chip = id, coords, 0
    self.device_kind, self.process_index, self.platform = kind, process_index, platform
    if slice_index is not None:
      self.slice_index = slice_index

  def __repr__(self):
    return f'D{self.id}'


def tpu_pod(slices, chips=(2, 2, 2), kind='TPU v4', chips_per_host=4):
  devices = []
  for s in range(slices):
    for z in range(chips[2]):
      for y in range(chips[1]):
        for x in range(chips[0]):
          n = len(devices)
          devices.append(FakeDevice(n, s, (x, y, z), kind, process_index=n // chips_per_host))
  return devices


@pytest.mark.parametrize('slices,chips,kind,fsdp', [
    (2, (2, 2, 2), 'TPU v4', 4),        # 2 x v4-16: data 4 (2 per slice), fsdp 4
    (2, (2, 2, 2), 'TPU v4', 8),        # fsdp = a whole slice
    (4, (2, 2, 1), 'TPU v5 lite', 2),   # 4 x v5e-4 (the v5e mesh handler)
    (3, (2, 2, 1), 'TPU v4', 1),        # data parallel only, odd slice count
])
def test_fsdp_groups_stay_inside_a_slice_and_data_spans_the_slices(slices, chips, kind, fsdp):
  devices = tpu_pod(slices, chips, kind)
  per_slice = len(devices) // slices
  grid = sharding.device_grid(-1, fsdp, devices)
  assert grid.shape == (len(devices) // fsdp, fsdp)
  assert sorted(d.id for d in grid.flat) == list(range(len(devices)))  # each device once
  row_slices = [{d.slice_index for d in row} for row in grid]
  assert all(len(s) == 1 for s in row_slices)          # every fsdp group in one slice (ICI)
  rows_per_slice = per_slice // fsdp
  assert [s.pop() for s in row_slices] == [i // rows_per_slice for i in range(len(grid))]
  for column in grid.T:                                # data replicas of a shard: every slice
    assert sorted(d.slice_index for d in column) == sorted(
        [s for s in range(slices)] * rows_per_slice)
  # The same physical layout in every slice: the DCN links matching chips.
  first = [d.coords for d in grid[:rows_per_slice].flat]
  for s in range(1, slices):
    assert [d.coords for d in grid[s * rows_per_slice:(s + 1) * rows_per_slice].flat] == first


def test_one_slice_and_explicit_slice_count_give_the_same_mesh():
  devices = tpu_pod(1)
  assert sharding.dcn_granules(devices) == (1, 'slice')
  np.testing.assert_array_equal(sharding.device_grid(-1, 4, devices),
                                sharding.device_grid(-1, 4, devices, mesh_dcn_data=1))
  two = tpu_pod(2)
  np.testing.assert_array_equal(sharding.device_grid(-1, 4, two),
                                sharding.device_grid(-1, 4, two, mesh_dcn_data=2))
  # What the trainer logs for 2 x v5litepod-256 with fsdp 16 (docs/launch.md).
  pod = tpu_pod(2, (16, 16, 1), 'TPU v5 lite')
  assert sharding.describe_mesh(sharding.mesh_from_grid(sharding.device_grid(-1, 16, pod))) == (
      'data 32 x fsdp 16 (512 devices; 2 slices: data across them, fsdp inside each)')
  assert sharding.describe_mesh(sharding.mesh_from_grid(sharding.device_grid(-1, 4, devices))) \
      == 'data 2 x fsdp 4 (8 devices)'


@pytest.mark.parametrize('devices,dcn,fsdp,match', [
    (tpu_pod(2), 3, 1, r'config.mesh_dcn_data=3: the devices span 2 TPU slices; .* \(-1 or 2\)'),
    (tpu_pod(2), 1, 1, r'config.mesh_dcn_data=1: the devices span 2 TPU slices'),
    (tpu_pod(2), -1, 16, r'config.mesh_fsdp=16 does not fit inside one slice \(16 devices on 2 '
                         r'slices\): fsdp must divide the 8 devices of each'),
    (tpu_pod(2), 0, 1, r'config.mesh_dcn_data=0: must be -1'),
    ([FakeDevice(i, process_index=i, platform='gpu', kind='NVIDIA H100 80GB HBM3')
      for i in range(6)], 4, 1, r'6 processes do not split into 4 groups'),
])
def test_bad_multi_slice_settings_name_the_field(devices, dcn, fsdp, match):
  with pytest.raises(sharding.MeshError, match=match) as err:
    sharding.device_grid(-1, fsdp, devices, mesh_dcn_data=dcn)
  assert isinstance(err.value, sharding.ConfigError)  # main.py: one line, exit 2


def test_cli_refuses_a_dcn_split_the_devices_cannot_make_with_exit_2(tmp_path, digits_dir):
  from test_fault_tolerance import main_cmd
  out = subprocess.run(main_cmd(str(tmp_path / 'w'), digits_dir, '--config.mesh_dcn_data=2'),
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      'error: bad config: config.mesh_dcn_data=2: without TPU slices the data axis spans hosts '
      '(equal groups of consecutive processes), and 1 process does not split into 2 groups')
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')  # before anything was computed


def test_hosts_are_the_granules_on_gpus_with_mesh_dcn_data():
  # 2 nodes x 4 GPUs, one process per GPU (Slurm numbers a node's tasks consecutively).
  gpus = [FakeDevice(i, process_index=i, platform='gpu', kind='NVIDIA H100 80GB HBM3')
          for i in range(8)]
  grid = sharding.device_grid(-1, 4, gpus, mesh_dcn_data=2)
  assert [[d.process_index // 4 for d in row] for row in grid] == [[0] * 4, [1] * 4]
  assert sharding.dcn_granules(gpus, -1) == (1, 'slice')  # no slices: one granule by default


def test_checkpoint_restores_onto_another_slice_count(tmp_path):
  env = host_devices_env(8)
  out = subprocess.run([sys.executable, 'tests/helpers/slices_restore.py', str(tmp_path / 'c')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['rows_slices_2'] == [0, 0, 1, 1]            # saved on 2 slices
  for name, rows in (('4_slices_fsdp2', [0, 1, 2, 3]), ('1_slice_fsdp8', [0])):
    got = result[name]
    assert got['rows_slices'] == rows and got['step'] == 7
    assert got['max_diff'] == 0.0 and got['shardings_as_asked'] and got['sharded_leaves'] > 0


# ---- MFU ------------------------------------------------------------------------------------

class TinyConvNet(nn.Module):
  """8x8x3 -> conv3x3 (VALID) 4 -> grouped conv3x3/2 (2 groups) 4 -> conv1x1 8 -> pool -> 10."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), padding='VALID')(x)                      # 6x6x4
    x = nn.Conv(4, (3, 3), strides=2, padding='VALID', feature_group_count=2)(x)  # 2x2x4
    x = nn.Conv(8, (1, 1))(x)                                       # 2x2x8
    return nn.Dense(10)(x.mean(axis=(1, 2)))


def test_training_flops_of_a_tiny_conv_net_by_hand():
  macs = (6 * 6 * 4 * 3 * 3 * 3        # conv1: outputs x (k*k*C_in)
          + 2 * 2 * 4 * 3 * 3 * 2      # grouped: C_in / groups = 2
          + 2 * 2 * 8 * 4              # 1x1
          + 8 * 10)                    # dense
  assert macs == 4384
  assert mfu.train_flops_per_image(TinyConvNet(), 8) == 6 * macs
  # XLA's own count of the forward pass: 2 x MACs plus the bias adds and the pooling.
  x = jnp.zeros((1, 8, 8, 3))
  variables = TinyConvNet().init(jax.random.key(0), x)
  cost = jax.jit(TinyConvNet().apply).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert 2 * macs <= cost['flops'] <= 1.05 * 2 * macs


def test_peak_table_by_device_kind():
  # Vendor bf16 dense figures (Cloud TPU system-architecture pages; NVIDIA datasheets, halving
  # their "with sparsity" numbers), by the device_kind strings JAX reports.
  expected = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5': 459e12, 'TPU v5p': 459e12,
              'TPU v6 lite': 918e12, 'NVIDIA A100-SXM4-80GB': 312e12,
              'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H100 PCIe': 756e12,
              'NVIDIA H100 NVL': 835e12, 'NVIDIA H200': 989e12, 'cpu': None, 'TPU v3': None}
  assert {k: mfu.table_peak(k) for k in expected} == expected


def _config(**kw):
  return ml_collections.ConfigDict({'image_size': 8, 'peak_flops_per_device': 0.0, **kw})


def test_mfu_and_per_device_rates_arithmetic():
  devices = [FakeDevice(i, 0) for i in range(8)]  # TPU v4: 275 TFLOP/s each
  t = mfu.Throughput.from_config(TinyConvNet(), _config(), devices)
  m = t.metrics(step=10, images_per_second=4000.0)
  # 26304 FLOPs/image x 4000 img/s = 105.216 GFLOP/s over 8 x 275 TFLOP/s.
  assert m['images_per_second_per_device'] == 500.0
  assert m['model_tflops_per_second_per_device'] == pytest.approx(26304 * 500 / 1e12)
  assert m['mfu'] == pytest.approx(26304 * 4000 / (8 * 275e12))
  assert 'MFU against 275 TFLOP/s per device (table)' in t.describe()
  # The config overrides the table; an unknown device has no MFU unless the config sets it.
  t = mfu.Throughput.from_config(TinyConvNet(), _config(peak_flops_per_device=1e9), devices)
  assert t.metrics(1, 100.0)['mfu'] == pytest.approx(26304 * 100 / (8 * 1e9))
  cpu = [FakeDevice(0, kind='cpu', platform='cpu')]
  t = mfu.Throughput.from_config(TinyConvNet(), _config(), cpu)
  assert 'mfu' not in t.metrics(1, 100.0)
  assert t.describe().endswith('peak FLOP/s unknown, no MFU shown (set '
                               'config.peak_flops_per_device to see it)')
  # Per-window TensorBoard scalars: 2 steps/s of 64 images.
  scalars = mfu.Throughput.from_config(TinyConvNet(), _config(), devices).scalars(3, 2.0, 64)
  assert scalars['throughput/images_per_second'] == 128.0
  assert scalars['throughput/step_time_ms'] == 500.0
  assert scalars['throughput/images_per_second_per_device'] == 16.0
  assert scalars['throughput/mfu'] == pytest.approx(26304 * 128 / (8 * 275e12))


def test_log_line_with_per_device_throughput_and_mfu():
  metrics = {'loss': 0.25, 'top1': 0.5, 'top5': 0.75, 'learning_rate': 0.1, 'grad_norm': 1.5,
             'images_per_second_per_device': 512.0, 'mfu': 0.41234}
  assert progress.train_line(10, 100, metrics, 4096.0, 2.0, '0:45') == (
      'step 10/100 | loss 0.2500 | top1 50.00% | top5 75.00% | lr 0.1 | grad_norm 1.5 | '
      '4096.0 img/s (2.00 steps/s) | 512.0 img/s/device | MFU 41.2% | ETA 0:45')
  # One device without a known peak: the line as before (no repeated rate, no made-up MFU).
  one = dict(metrics, images_per_second_per_device=306.3)
  del one['mfu']
  assert progress.train_line(10, 100, one, 306.3, 4.79, None).endswith(
      'grad_norm 1.5 | 306.3 img/s (4.79 steps/s)')


def test_window_rate_is_since_the_previous_call_without_excluded_time(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: clock[0])
  p = progress.Progress(100, 0, 32, 50, interactive=False)
  assert p.window_steps_per_second() is None      # nothing timed yet
  clock[0] = 30.0                                 # step 1 (with compilation): not timed
  p.step(1)
  for step in range(2, 6):                        # 4 steps at 0.5 s
    clock[0] += 0.5
    p.step(step)
  assert p.window_steps_per_second() == 2.0
  for step in range(6, 8):                        # 2 steps at 1 s, and a 10 s evaluation
    clock[0] += 1.0
    p.step(step)
  with p.excluded():
    clock[0] += 10.0
  assert p.window_steps_per_second() == 1.0
  assert p.steps_per_second() == pytest.approx(6 / 4.0)   # the mean since step 1 stays


# ---- Profiling ------------------------------------------------------------------------------

@pytest.mark.parametrize('steps,profile,start,expected', [
    ((), False, 0, None),
    ((10, 15), False, 0, (10, 15)),
    ((10, 15), False, 12, (12, 15)),     # resumed inside the window: from the first step
    ((10, 15), False, 15, None),         # resumed after it
    ((), True, 100, (110, 115)),         # the older switch: 5 steps after the run's 10th
    ((3, 4), True, 0, (3, 4)),           # profile_steps wins
])
def test_profile_window(steps, profile, start, expected):
  config = ml_collections.ConfigDict(dict(profile_steps=steps, profile=profile))
  assert profiling.window(config, start) == expected


def _tensorboard_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'tensors': 0})
  acc.Reload()
  return {tag: [e.step for e in acc.Tensors(tag)] for tag in acc.Tags()['tensors']}


def test_trainer_traces_chosen_steps_and_logs_mfu_and_throughput(digits_dir, tmp_path, caplog,
                                                                  monkeypatch):
  import train
  from test_train import tiny_config
  monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` would fail: W&B is off
  workdir = str(tmp_path / 'run')
  config = tiny_config(digits_dir, num_train_steps=4, log_every_steps=2, profile_steps=(1, 3),
                       peak_flops_per_device=1e12)
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(config, workdir)
  traces = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  log = [r.getMessage() for r in caplog.records]
  assert any(m.startswith('profiler: tracing steps 2-3 into ') for m in log)
  # MFU on the line = 3 x 2 x MACs x img/s / 1e12 (one CPU device, peak from the config).
  from senet_jax.models import counting
  _, macs = counting.count(train.build_model(config), config.image_size)
  lines = [m for m in log if m.startswith('step ')]
  assert len(lines) == 3  # steps 2, 3 (checkpoint), 4
  for line in lines:
    ips, pct = re.search(r'\| ([\d.]+) img/s .*\| MFU ([\d.e-]+)%', line).groups()
    assert float(pct) == pytest.approx(100 * 6 * macs * float(ips) / 1e12, rel=0.01)
    assert 'img/s/device' not in line  # one device: not repeated
  tags = _tensorboard_tags(workdir)
  for tag in ('train/images_per_second_per_device', 'train/mfu', 'throughput/images_per_second',
              'throughput/mfu', 'throughput/step_time_ms'):
    assert tags.get(tag) == [2, 3, 4], (tag, tags.get(tag))


# ---- Weights & Biases -------------------------------------------------------------------------

def test_wandb_is_not_imported_when_off(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # any `import wandb` raises ImportError
  config = ml_collections.ConfigDict(dict(wandb_project=''))
  writer = progress.create_writer(str(tmp_path), config)
  writer.write_scalars(1, {'train/loss': 1.0})
  writer.close()
  assert glob.glob(str(tmp_path / 'events.out.tfevents.*'))


def _wandb_history(run_file):
  """The logged rows of an offline W&B run file (LevelDB-style log of protobuf records)."""
  import struct
  from wandb.proto import wandb_internal_pb2 as pb
  data, pos, pending, rows = open(run_file, 'rb').read(), 7, b'', []
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # block trailer
      pos += 32768 - pos % 32768
      continue
    _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # a full record, or the last piece of one
      record = pb.Record()
      record.ParseFromString(pending)
      pending = b''
      if record.WhichOneof('record_type') == 'history':
        rows.append({i.key or '/'.join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item})
  return rows


def test_wandb_writer_offline_logs_the_trainer_scalars(tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  config = ml_collections.ConfigDict(dict(wandb_project='senet-test', batch_size=32))
  writer = progress.create_writer(str(tmp_path), config)
  writer.write_scalars(2, {'train/loss': 2.5, 'throughput/mfu': 0.25})
  writer.write_scalars(4, {'train/loss': 1.25})
  writer.close()
  runs = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
  assert len(runs) == 1 and writers.run_id(str(tmp_path)) in runs[0]
  rows = [{k: v for k, v in r.items() if not k.startswith('_') or k == '_step'}
          for r in _wandb_history(runs[0])]
  assert rows == [{'train/loss': 2.5, 'throughput/mfu': 0.25, '_step': 2},
                  {'train/loss': 1.25, '_step': 4}]
