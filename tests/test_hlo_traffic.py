"""The per-kernel memory traffic read from optimized HLO (benchmarks/hlo_traffic.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import hlo_traffic  # noqa: E402

# A hand-written module in the form XLA:CPU prints: a BatchNorm-like reduction fusion, a
# forward and a backward convolution, an unnamed transpose feeding the backward one, XLA:CPU's
# dense lowering of a depthwise weight gradient, an optimizer update and free instructions.
MODULE = '''HloModule jit_step, is_scheduled=true

%add_computation (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add = f32[] add(%x, %y)
}

%fused_reduce (param_0: f32[8,4,4,16]) -> f32[16] {
  %param_0 = f32[8,4,4,16]{3,2,1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[16]{0} reduce(%param_0, %zero), dimensions={0,1,2}, to_apply=%add_computation
}

%fused_scale (param_0.1: f32[16,3,3,16]) -> f32[16,3,3,16] {
  %param_0.1 = f32[16,3,3,16]{3,2,1,0} parameter(0)
  ROOT %neg.1 = f32[16,3,3,16]{3,2,1,0} negate(%param_0.1)
}

ENTRY %main (p: f32[3,3,16,16], x: f32[8,4,4,16], m: f32[3,3,16,16], d: f32[3,3,1,16]) -> (f32[3,3,16,16], f32[16]) {
  %p = f32[3,3,16,16]{3,2,1,0} parameter(0)
  %x = f32[8,4,4,16]{3,2,1,0} parameter(1), metadata={op_name="x"}
  %m = f32[3,3,16,16]{3,2,1,0} parameter(2)
  %d = f32[3,3,1,16]{3,2,1,0} parameter(3)
  %conv.0 = f32[8,4,4,16]{3,2,1,0} convolution(%x, %d), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, feature_group_count=16, metadata={op_name="jit(step)/jvp(Net)/blocks_0/conv_dw/conv_general_dilated"}
  %conv.1 = f32[8,4,4,16]{3,2,1,0} convolution(%x, %p), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/jvp(Net)/blocks_0/conv2/conv_general_dilated"}
  %stats = f32[16]{0} fusion(%conv.1), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(step)/jvp(Net)/blocks_0/bn2/reduce_sum"}
  %bc = f32[8,16,16]{2,1,0} bitcast(%conv.1)
  %transpose.7 = f32[16,4,4,8]{3,2,1,0} transpose(%x), dimensions={3,1,2,0}
  %conv.2 = f32[16,3,3,16]{3,2,1,0} convolution(%transpose.7, %conv.1), window={size=4x4}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(step)/transpose(jvp(Net))/blocks_0/conv_dw/conv_general_dilated"}
  %dense = f32[16,3,3,16]{3,2,1,0} fusion(%conv.2), kind=kLoop, calls=%fused_scale
  %update = f32[3,3,16,16]{3,2,1,0} add(%p, %m), metadata={op_name="jit(step)/add"}
  ROOT %out = (f32[3,3,16,16]{3,2,1,0}, f32[16]{0}) tuple(%update, %stats)
}
'''
ACT = 8 * 4 * 4 * 16 * 4          # bytes of x and of conv.1's output
KERNEL = 3 * 3 * 16 * 16 * 4      # bytes of p, m and the dense 16 x 16 weight gradient
DEPTHWISE = 3 * 3 * 1 * 16 * 4    # bytes of d


def test_shape_bytes_by_hand():
  assert hlo_traffic.shape_bytes('f32[8,4,4,16]{3,2,1,0}') == ACT
  assert hlo_traffic.shape_bytes('bf16[2,3]') == 12
  assert hlo_traffic.shape_bytes('(f32[2]{0}, /*index=1*/s8[5], pred[])') == 8 + 5 + 1
  assert hlo_traffic.shape_bytes('f32[]') == 4


def test_kernels_of_the_entry_computation_and_their_bytes():
  kernels = {k.name: k for k in hlo_traffic.parse_kernels(MODULE, batch=8)}
  # parameters, the bitcast and the tuple move nothing; the fused computations are not kernels.
  assert sorted(kernels) == ['conv.0', 'conv.1', 'conv.2', 'dense', 'stats', 'transpose.7',
                             'update']
  assert (kernels['conv.1'].bytes_in, kernels['conv.1'].bytes_out) == (ACT + KERNEL, ACT)
  assert kernels['stats'].nbytes == ACT + 16 * 4
  assert kernels['stats'].kind == 'reduction' and kernels['conv.1'].kind == 'convolution'
  assert kernels['transpose.7'].kind == 'copy'
  assert kernels['update'].nbytes == 3 * KERNEL and kernels['update'].kind == 'other'


def test_unnamed_kernels_take_the_model_name_of_their_neighbours():
  kernels = {k.name: k for k in hlo_traffic.parse_kernels(MODULE, batch=8)}
  backward = 'jit(step)/transpose(jvp(Net))/blocks_0/conv_dw/conv_general_dilated'
  assert kernels['transpose.7'].op_name == backward   # from its user
  assert kernels['dense'].op_name == backward         # from the convolution it reads
  assert hlo_traffic.direction(backward) == 'backward'
  assert hlo_traffic.direction(kernels['conv.1'].op_name) == 'forward'
  assert hlo_traffic.direction(kernels['update'].op_name) == 'update'


def test_roles_from_the_module_names():
  assert hlo_traffic.role('jit(step)/jvp(Net)/blocks_0/bn2/reduce_sum') == 'batchnorm'
  assert hlo_traffic.role('jit(step)/jvp(Net)/blocks_0/se/reduce/conv') == 'se'
  assert hlo_traffic.role('jit(step)/transpose(jvp(Net))/blocks_1_0/jit(silu)/add_any') == \
      'activation'
  assert hlo_traffic.role('jit(step)/jvp(Net)/blocks_0/conv_dw/conv') == 'depthwise conv'
  assert hlo_traffic.role('jit(step)/add') == 'optimizer'


def test_dense_lowering_of_a_depthwise_weight_gradient_is_marked():
  kernels = {k.name: k for k in hlo_traffic.parse_kernels(MODULE, batch=8)}
  assert kernels['conv.2'].kind == hlo_traffic.CPU_GROUPED_LOWERING
  assert kernels['dense'].kind == hlo_traffic.CPU_GROUPED_LOWERING
  assert kernels['conv.1'].kind == 'convolution'  # a [3,3,16,16] kernel outside conv_dw
  assert kernels['conv.0'].kind == 'convolution'  # the depthwise forward: a [3,3,1,16] kernel


def test_per_image_bytes_share_the_update_over_the_target_batch():
  kernels = hlo_traffic.parse_kernels(MODULE, batch=8)
  assert [k.name for k in kernels if not k.per_image] == ['update']
  summary = hlo_traffic.summarize(kernels, batch=8, target_batch=256)
  per_batch = sum(k.nbytes for k in kernels if k.per_image)
  assert summary['total'] == pytest.approx(per_batch / 8 + 3 * KERNEL / 256)
  assert summary['by_role']['optimizer'] == pytest.approx(3 * KERNEL / 256)
  # conv.1 and conv.0; for conv.2, lowered densely on the CPU, one grouped kernel moving what
  # the layer's forward convolution (conv.0) moves.
  assert summary['conv_floor'] == pytest.approx(
      (2 * ACT + KERNEL) / 8 + 2 * (2 * ACT + DEPTHWISE) / 8)
  lowering = sum(k.nbytes for k in kernels if k.kind == hlo_traffic.CPU_GROUPED_LOWERING)
  assert summary['cpu_only'] == pytest.approx(lowering / 8)


def test_total_matches_xla_cost_analysis_on_a_compiled_function():
  # XLA's own count is the independent reference: a reduction and an elementwise kernel.
  import jax
  import jax.numpy as jnp

  def f(x, w):
    h = jnp.tanh(x @ w)
    return h * 2.0, h.sum(axis=0)

  args = (jnp.ones((64, 32), jnp.float32), jnp.ones((32, 48), jnp.float32))
  compiled = jax.jit(f).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  kernels = hlo_traffic.parse_kernels(compiled.as_text(), batch=64)
  assert sum(k.nbytes for k in kernels) == pytest.approx(cost['bytes accessed'], rel=0.02)
  assert any(k.kind == 'matmul' for k in kernels)


def test_layer_path_is_the_same_in_both_passes():
  forward = 'jit(step)/jvp(EfficientNet)/blocks_5_3/conv_dw/conv_general_dilated'
  backward = 'jit(step)/transpose(jvp(EfficientNet))/blocks_5_3/conv_dw/conv_general_dilated'
  assert hlo_traffic.layer_path(forward) == hlo_traffic.layer_path(backward) == \
      'blocks_5_3/conv_dw'
  assert hlo_traffic.layer_path('jit(step)/add') == ''


def test_gpu_library_calls_are_convolutions_and_matrix_products():
  conv = '%c = (bf16[8,4,4,16]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), ' \
         'custom_call_target="__cudnn$convForward"'
  gemm = '%g = bf16[64,48]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm"'
  for line, kind in ((conv, 'convolution'), (gemm, 'matmul')):
    match = hlo_traffic._INSTRUCTION.match(line)
    assert hlo_traffic._kind(match['op'], match['attrs'], {}) == kind


def test_resnet_roles():
  assert hlo_traffic.role('jit(step)/transpose(jvp(ResNet))/layer1_2/select_n') == 'activation'
  assert hlo_traffic.role('jit(step)/jvp(ResNet)/layer1_0/layer1_0._shortcut/add_any') == \
      'shortcut + residual sum'


def test_command_line_reads_a_saved_module(tmp_path, capsys):
  path = tmp_path / 'step.hlo.txt'
  path.write_text(MODULE)
  assert hlo_traffic.main(['--hlo', str(path), '--batch=8', '--target_batch=256']) == 0
  out = capsys.readouterr().out
  total = (sum(k.nbytes for k in hlo_traffic.parse_kernels(MODULE, 8) if k.per_image) / 8
           + 3 * KERNEL / 256)
  assert f'{total / 1e6:.1f} MB per image over 7 kernels' in out
  assert '| batchnorm |' in out and '| backward |' in out
