"""The benchmark's roofline arithmetic and report table (benchmarks/roofline.py, train_step.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import roofline  # noqa: E402
import train_step  # noqa: E402


def _row(**extra):
  return {'model': 'efficientnet_b0', 'timm_model': 'tf_efficientnet_b0', 'mode': 'train',
          'resolution': 224, 'batch': 256, 'senet_jax_img_s': 512.0, 'timm_img_s': 256.0,
          'ratio_vs_timm': 2.0, 'jax_compile_s': 3.0, 'jax_gflop': 100.0, 'jax_gbytes': 50.0,
          **extra}


def test_achieved_fractions_by_hand():
  # 512 img/s at batch 256 is 2 steps/s: 200 GFLOP/s and 100 GB/s.
  out = roofline.achieved(_row(), {'peak_tflops': 1.0, 'peak_tb_s': 0.5})
  assert out['jax_tflops'] == pytest.approx(0.2)
  assert out['jax_tb_s'] == pytest.approx(0.1)
  assert out['frac_peak_flops'] == pytest.approx(0.2)
  assert out['frac_hbm'] == pytest.approx(0.2)


def test_cost_accepts_both_jax_return_types():
  assert roofline._cost([{'flops': 1.0}]) == {'flops': 1.0}
  assert roofline._cost({'flops': 2.0}) == {'flops': 2.0}
  assert roofline._cost([]) == {} and roofline._cost(None) == {}


def test_step_cost_counts_three_forward_passes_for_training():
  from senet_jax.models import counting, create_model
  import jax
  import jax.numpy as jnp
  model = create_model('resnet18', num_classes=10)
  compiled = jax.jit(lambda x: x * 2).lower(jnp.ones((4, 8), jnp.float32)).compile()
  _, macs = counting.count(model, 32)
  train = roofline.step_cost(model, 32, batch=4, train=True, compiled=compiled)
  infer = roofline.step_cost(model, 32, batch=4, train=False, compiled=compiled)
  assert train['gflop'] == pytest.approx(3 * infer['gflop']) == pytest.approx(24 * macs / 1e9)
  assert infer['gbytes'] == pytest.approx(2 * 4 * 8 * 4 / 1e9)  # read + write of 4x8 float32


def test_table_columns_follow_the_rows():
  plain = train_step.markdown_table([_row()])
  assert 'timm+compile' not in plain and 'TFLOP/s' not in plain
  full = _row(timm_compile_img_s=400.0, ratio_vs_timm_compile=1.28)
  full.update(roofline.achieved(full, {'peak_tflops': 1.0, 'peak_tb_s': 0.5}))
  header, _, line = train_step.markdown_table([full]).splitlines()
  assert header.count('|') == line.count('|')
  assert '| 400.0 | 1.28 |' in line and '0.2 (20.0%)' in line and '0.10 (20%)' in line


def test_allocator_is_named_from_the_environment():
  jemalloc = {'LD_PRELOAD': '/usr/lib/libjemalloc.so.2 /x.so', 'MALLOC_CONF': 'narenas:1'}
  assert train_step.allocator_name(jemalloc) == ('jemalloc (/usr/lib/libjemalloc.so.2, '
                                                 'MALLOC_CONF=narenas:1)')
  assert train_step.allocator_name({}) == 'glibc malloc (jemalloc not installed)'
  assert train_step.allocator_name({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}) == (
      'glibc malloc (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)')


def test_steal_fraction_by_hand():
  # 50 ticks at 100 Hz are 0.5 s stolen out of 2 CPUs x 1 s.
  assert train_step.steal_fraction(1000, 1050, 1.0, hz=100, cpus=2) == pytest.approx(0.25)
  assert train_step.steal_fraction(None, 1050, 1.0) is None
  assert train_step.steal_fraction(1000, 1000, 2.0, hz=100, cpus=2) == 0.0


def test_row_prints_steal_when_measured():
  assert 'steal=25%' in train_step.format_row(_row(cpu_steal=0.25))
  assert 'steal' not in train_step.format_row(_row(cpu_steal=None))
  assert train_step.cpu_steal_ticks() is None or train_step.cpu_steal_ticks() >= 0


def test_separate_processes_pool_the_steps_of_all_rounds(monkeypatch):
  """--rounds: one process per framework and round; medians over the pooled single steps."""
  calls = []

  def fake_isolated(args, name, shape, mode, framework=''):
    calls.append(framework)
    r = (len(calls) - 1) // 2  # round index: jax then timm in each round
    if framework == '--no_torch':
      steps = [[0.5, 0.5, 4.0], [0.25, 0.5, 0.5]][r]
      return _row(batch=16, senet_jax_step_s=steps, senet_jax_img_s=16 / sorted(steps)[1],
                  jax_compile_s=[10.0, 14.0][r], cpu_steal=0.01)
    steps = [[1.0, 1.0, 2.0], [1.0, 2.0, 2.0]][r]
    return {'model': name, 'batch': 16, 'timm_step_s': steps, 'cpu_steal': 0.03,
            'timm_img_s': 16 / sorted(steps)[1]}

  monkeypatch.setattr(train_step, 'run_isolated', fake_isolated)
  args = train_step.parse_args(['--rounds=2'])
  row = train_step.run_separate(args, 'efficientnet_b0', '224x16', 'train')
  assert calls == ['--no_torch', '--torch_only'] * 2
  # Pooled jax steps 0.25, 0.5 x4, 4.0 -> median 0.5 s = 32 img/s; timm 1, 1, 1, 2, 2, 2 -> 1.5 s.
  assert row['senet_jax_img_s'] == pytest.approx(32.0)
  assert row['timm_img_s'] == pytest.approx(16 / 1.5)
  assert row['ratio_vs_timm'] == pytest.approx(3.0)
  assert row['jax_compile_s'] == pytest.approx(12.0)
  assert row['cpu_steal'] == pytest.approx(0.03)
  assert row['senet_jax_round_img_s'] == [pytest.approx(32.0), pytest.approx(32.0)]
  assert train_step.format_row(row)  # prints without a KeyError


def test_a_model_without_a_timm_counterpart_is_refused_in_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_step.parse_args(['--models=efficientnet_b0,se_resnet18'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert '--models: se_resnet18 has no timm counterpart' in error and 'se_resnet50' in error
  assert train_step.parse_args(['--models=se_resnet50']).models == 'se_resnet50'
