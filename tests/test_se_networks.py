"""The other SE networks of the paper (VGG, BN-Inception, Inception-ResNet-v2, MobileNet,
ShuffleNet) and MobileNetV3: sizes against published numbers, SE placement by the gates each
network records, and a few real training steps on the digits dataset.

Full-size counts go through `jax.eval_shape` (no compile). References: the SE paper's Tables 2-3,
torchvision / timm parameter counts, the MobileNet, ShuffleNet, MobileNetV3 and EfficientNet
papers' multiply-add figures, and hand computations from the papers' layer tables.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from configs import quickstart
from senet_jax.models.counting import count
from senet_jax.models import collect_excitations, create_model
from senet_jax.models.bn_inception import MODULES
from conftest import params_without_gradient

M = 1_000_000


def sizes(name, resolution=224, se_gating=False, **overrides):
  return count(create_model(name, **overrides), resolution, se_gating)


def se_params(channels, r=16):
  """Hand count of one SE block with biases and floor(C / r) hidden units."""
  hidden = channels // r
  return 2 * channels * hidden + hidden + channels


def gate_channels(name, size=32, **overrides):
  """{gate name: gated channels} as recorded by the model (shapes only, nothing compiled)."""
  model = create_model(name, num_classes=10, **overrides)
  x = jnp.ones((1, size, size, 3))

  def run():
    variables = model.init(jax.random.key(0), x)
    return model.apply(variables, x, mutable=('intermediates',))[1]

  state = jax.eval_shape(run)
  gates = collect_excitations(state.get('intermediates', {}))
  return {k: v.shape[-1] for k, v in gates.items()}


# ---- VGG-16 -------------------------------------------------------------------------------
VGG16_CONVS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_vgg16_sizes():
  params, macs = sizes('vgg16_bn')
  assert params == 138_365_992                    # torchvision vgg16_bn
  assert round(macs / 1e9, 2) == 15.47             # SE paper Table 2, torchvision
  se_params_, se_macs = sizes('se_vgg16', se_gating=True)
  assert se_params_ - params == sum(se_params(c) for c in VGG16_CONVS)
  assert round(se_macs / 1e9, 2) == 15.48          # SE paper Table 2 (gating counted)


def test_se_vgg_gates_after_every_conv_or_each_stage():
  tiny = dict(stage_widths=(16, 16, 32, 32, 32), hidden_width=16)
  gates = gate_channels('se_vgg16', **tiny)
  assert list(gates) == ['SE_1_1', 'SE_1_2', 'SE_2_1', 'SE_2_2'] + [
      f'SE_{s}_{i}' for s in (3, 4, 5) for i in (1, 2, 3)]
  assert list(gate_channels('se_vgg16', se_placement='stage_end', **tiny)) == [
      'SE_1_2', 'SE_2_2', 'SE_3_3', 'SE_4_3', 'SE_5_3']


def test_vgg_classifier_reads_torch_flatten_order_on_other_sizes():
  # 7x7 adaptive pooling of a 2x2 map repeats each cell (PyTorch's AdaptiveAvgPool2d).
  from senet_jax.models.layers import adaptive_avg_pool
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  pooled = adaptive_avg_pool(x, 7)[0, :, :, 0]
  assert np.asarray(pooled)[:, 0].tolist() == [0, 0, 0, 1, 2, 2, 2]
  assert np.asarray(pooled)[0].tolist() == [0, 0, 0, 0.5, 1, 1, 1]


# ---- BN-Inception -------------------------------------------------------------------------
# BN paper Fig. 5: (#1x1, #3x3 reduce, #3x3, #double reduce, #double 3x3, pool proj, stride).
BN_INCEPTION_TABLE = [(64, 64, 64, 64, 96, 32, 1), (64, 64, 96, 64, 96, 64, 1),
                      (0, 128, 160, 64, 96, 0, 2), (224, 64, 96, 96, 128, 128, 1),
                      (192, 96, 128, 96, 128, 128, 1), (160, 128, 160, 128, 160, 128, 1),
                      (96, 128, 192, 160, 192, 128, 1), (0, 128, 192, 192, 256, 0, 2),
                      (352, 192, 320, 160, 224, 128, 1), (352, 192, 320, 192, 224, 128, 1)]


def bn_inception_hand_count():
  """Convs with bias + BN (scale, offset) as in the Caffe release; 1000-way FC."""
  conv = lambda k, cin, cout: k * k * cin * cout + cout + 2 * cout
  total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
  channels, outputs = 192, []
  for b1, r3, c3, rd, d3, proj, stride in BN_INCEPTION_TABLE:
    total += (conv(1, channels, b1) if b1 else 0) + conv(1, channels, r3) + conv(3, r3, c3)
    total += conv(1, channels, rd) + conv(3, rd, d3) + conv(3, d3, d3)
    total += conv(1, channels, proj) if proj else 0
    channels = b1 + c3 + d3 + (proj if stride == 1 else channels)
    outputs.append(channels)
  return total + channels * 1000 + 1000, outputs


def test_bn_inception_sizes_and_se_on_every_module_output():
  expected, outputs = bn_inception_hand_count()
  params, macs = sizes('bn_inception')
  assert params == expected
  assert abs(macs / 2.03e9 - 1) < 0.03             # SE paper Table 2: 2.03 GFLOPs
  se_total, _ = sizes('se_bn_inception')
  assert se_total - params == sum(se_params(c) for c in outputs)
  assert abs(sizes('se_bn_inception', se_gating=True)[1] / 2.04e9 - 1) < 0.03  # SE paper
  gates = gate_channels('se_bn_inception')
  assert list(gates.values()) == outputs == [256, 320, 576, 576, 576, 608, 608, 1056, 1024,
                                             1024]
  assert list(gates) == ['SE_3_1', 'SE_3_2', 'SE_3_3'] + [f'SE_4_{i}' for i in range(1, 6)] + [
      'SE_5_1', 'SE_5_2']


# ---- Inception-ResNet-v2 ------------------------------------------------------------------
def test_inception_resnet_v2_sizes():
  params, macs = sizes('inception_resnet_v2', 299)
  assert params == 55_843_464                      # timm inception_resnet_v2
  assert abs(macs / 13e9 - 1) < 0.03                # EfficientNet paper Table 2: 13B FLOPs
  se_total, _ = sizes('se_inception_resnet_v2', 299)
  assert se_total - params == (10 * se_params(320) + 20 * se_params(1088)
                               + 10 * se_params(2080))


def test_se_inception_resnet_gates_each_residual_branch():
  gates = gate_channels('se_inception_resnet_v2', size=32, stage_sizes=(1, 2, 1),
                        padding='same')
  assert gates == {'SE_1_1': 320, 'SE_2_1': 1088, 'SE_2_2': 1088, 'SE_3_1': 2080,
                   'SE_3_2': 2080}
  with pytest.raises(ValueError, match='padding'):
    create_model('inception_resnet_v2', padding='zeros')


# ---- MobileNet and ShuffleNet (SE paper Table 3) ------------------------------------------
def truncated_millions(n):
  return math.floor(n / 1e5) / 10


def test_mobilenet_v1_sizes_match_paper_and_timm():
  params, macs = sizes('mobilenet_v1')
  se_total, se_macs = sizes('se_mobilenet_v1', se_gating=True)
  assert params == 4_231_976                        # timm mobilenetv1_100
  assert (truncated_millions(params), truncated_millions(se_total)) == (4.2, 4.7)
  assert (round(macs / M), round(se_macs / M)) == (569, 572)


def test_se_mobilenet_gates_follow_each_separable_block():
  gates = gate_channels('se_mobilenet_v1')
  assert list(gates.values()) == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]


def test_shufflenet_sizes_match_paper():
  params, macs = sizes('shufflenet_v1_g3')
  se_total, se_macs = sizes('se_shufflenet_v1_g3', se_gating=True)
  assert (truncated_millions(params), truncated_millions(se_total)) == (1.8, 2.4)
  assert abs(macs / 140e6 - 1) < 0.03               # ShuffleNet paper Table 2: 140 MFLOPs
  assert round((se_macs - macs) / M) == 142 - 140   # SE paper Table 3 increment
  # SE on the residual branch: first units carry out - in channels (ShuffleNet Table 1).
  branches = [240 - 24] + [240] * 3 + [480 - 240] + [480] * 7 + [960 - 480] + [960] * 3
  assert se_total - params == sum(se_params(c) for c in branches)


def test_shufflenet_units_shuffle_channels_and_concatenate_on_stride_two():
  from senet_jax.models.shufflenet import channel_shuffle
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)           # groups of 2: [0 1 | 2 3 | 4 5]
  assert np.asarray(channel_shuffle(x, 3)).ravel().tolist() == [0, 2, 4, 1, 3, 5]
  gates = gate_channels('se_shufflenet_v1_g3', scale=0.5)
  assert list(gates.values()) == [120 - 24] + [120] * 3 + [120] + [240] * 7 + [240] + [480] * 3


# ---- MobileNetV3 --------------------------------------------------------------------------
@pytest.mark.parametrize('name,params,madds', [('mobilenetv3_large_100', 5_483_032, 219e6),
                                               ('mobilenetv3_small_100', 2_542_856, 56e6)])
def test_mobilenetv3_sizes(name, params, madds):
  counted, macs = sizes(name)
  assert counted == params                          # timm tf_mobilenetv3_*_100
  assert abs(macs / madds - 1) < 0.03               # MobileNetV3 paper Table 3
  assert sizes(f'{name}_no_se')[0] < params


def test_mobilenetv3_se_widths_and_positions():
  # MobileNetV3 paper Table 1: SE on the expanded tensor of these blocks.
  gates = gate_channels('mobilenetv3_large_100')
  assert list(gates.values()) == [72, 120, 120, 480, 672, 672, 960, 960]
  model = create_model('mobilenetv3_large_100')
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))['params']
  # SE width make_divisible(72 / 4, 8) = 24 (not 18), hard-sigmoid gate.
  assert params['blocks_2_0']['se']['reduce']['kernel'].shape == (1, 1, 72, 24)
  assert not gate_channels('mobilenetv3_small_100_no_se')


def test_v3_block_string_errors_name_the_problem():
  from senet_jax.models.mobilenet import decode_v3_block
  assert decode_v3_block('ir_r2_k5_s1_e2.3_c80_se0.25_nre').expand_ratio == 2.3
  with pytest.raises(ValueError, match='kind must be'):
    decode_v3_block('xx_r1_k3_s1_c16')
  with pytest.raises(ValueError, match="missing \\['c'\\]"):
    decode_v3_block('ir_r1_k3_s1_e6')


# ---- Every network trains on digits -------------------------------------------------------
TINY = {
    'se_vgg16': dict(stage_widths=(8, 8, 16, 16, 16), hidden_width=32, dropout_rate=0.0,
                     se_act='swish'),  # a ReLU SE this narrow can be all-dead at init
    # Modules 3a, 3c, 4a, 4e, 5b: every module kind (avg / max pool branch, stride 2).
    'se_bn_inception': dict(modules=tuple(MODULES[i] for i in (0, 2, 3, 7, 9))),
    'se_inception_resnet_v2': dict(stage_sizes=(1, 1, 1), padding='same'),
    'se_mobilenet_v1': dict(width=0.25, se_act='swish'),
    'se_shufflenet_v1_g3': dict(scale=0.25),
    # MobileNetV3-Small's block kinds (ds+SE, ir, ir+SE, cn) at a fraction of its depth.
    'mobilenetv3_small_100': dict(stages=(('ds_r1_k3_s2_e1_c8_se0.25_nre',),
                                          ('ir_r1_k3_s2_e4.5_c16_nre',),
                                          ('ir_r2_k5_s1_e4_c16_se0.25',), ('cn_r1_k1_s1_c32',)),
                                  head_channels=32),
}


@pytest.mark.parametrize('name', sorted(TINY))
def test_every_parameter_gets_a_gradient(name):
  model = create_model(name, num_classes=10, **TINY[name])
  zero = params_without_gradient(model)
  assert not zero, f'parameters with zero gradient: {zero}'


@pytest.mark.parametrize('name', sorted(TINY))
def test_trains_a_few_steps_on_digits(name, digits_dir, tmp_path):
  config = quickstart.get_config()
  config.model = name
  config.model_kwargs = TINY[name]
  config.update(dict(data_dir=digits_dir, batch_size=16, eval_batch_size=128, num_epochs=0.0,
                     num_train_steps=3, warmup_epochs=0.0, eval_every_epochs=0.0,
                     checkpoint_every_steps=3, log_every_steps=1, ema_decay=0.0))
  workdir = tmp_path / name
  results = train.train_and_evaluate(config, str(workdir))
  assert results['num_examples'] == 359
  assert np.isfinite(results['loss']) and 0.0 <= results['top1'] <= results['top5'] <= 1.0
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3']


def test_too_small_images_for_inception_resnet_are_a_config_error(digits_dir, tmp_path):
  config = quickstart.get_config()
  config.update(dict(model='se_inception_resnet_v2', data_dir=digits_dir, image_size=64))
  config.model_kwargs = {}
  with pytest.raises(train.ConfigError, match=r"image_size=64 .* >= 75 .*padding='same'"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
