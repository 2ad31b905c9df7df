"""The model builder: conv_impl enters once, dtype by name, one log line per model setup."""
import logging

import jax.numpy as jnp
import pytest

from senet_jax.models import builder


def test_conv_impl_enters_once():
  model = builder.build_model('resnet18', num_classes=10, conv_impl='xla')
  assert model.conv_impl == 'xla' and model.num_classes == 10
  # model_kwargs may carry it (old configs) when the top-level value is left at 'auto'
  model = builder.build_model('resnet18', num_classes=10, model_kwargs={'conv_impl': 'shift'})
  assert model.conv_impl == 'shift'
  with pytest.raises(ValueError, match='conv_impl is set twice'):
    builder.build_model('resnet18', num_classes=10, conv_impl='xla',
                        model_kwargs={'conv_impl': 'shift'})


def test_dtype_by_name_and_fields_pass_through():
  model = builder.build_model('se_resnet18', num_classes=3, dtype='bfloat16',
                              model_kwargs={'attn_layer': 'eca', 'se_stages': (4, 5)})
  assert (model.dtype, model.attn_layer, tuple(model.se_stages)) == (jnp.bfloat16, 'eca', (4, 5))
  with pytest.raises(ValueError, match="dtype='float16'"):
    builder.build_model('resnet18', num_classes=3, dtype='float16')


def test_the_formulation_is_logged_once(caplog):
  with caplog.at_level(logging.INFO):
    for _ in range(3):
      builder.build_model('mobilenet_v1', num_classes=7, conv_impl='split')
  lines = [r.getMessage() for r in caplog.records if 'conv_impl=split' in r.getMessage()]
  assert len(lines) == 1 and 'mobilenet_v1' in lines[0]


def test_the_log_line_names_the_policy_the_model_got(caplog):
  from senet_jax.ops import ConvPolicy
  policy = ConvPolicy('cpu', 'ynn', kernels=False)
  with caplog.at_level(logging.INFO):
    model = builder.build_model('shufflenet_v1_g3', num_classes=5, conv_policy=policy)
  assert model.conv_policy == policy
  lines = [r.getMessage() for r in caplog.records if 'shufflenet_v1_g3' in r.getMessage()]
  assert lines == ['model shufflenet_v1_g3: conv_impl=auto on cpu, ynn convolutions, C++ kernels '
                   'off, 1 device(s)']
