"""The CPU convolution flag: when it is added, how the engine is read back, and that XLA obeys."""
import subprocess
import sys

import pytest

from senet_jax.utils import xla_flags


def test_flag_is_appended_to_existing_flags():
  flags = xla_flags.xla_flags_with_cpu_conv({'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert flags.split() == ['--xla_force_host_platform_device_count=8', xla_flags.CPU_CONV_FLAG]
  assert xla_flags.xla_flags_with_cpu_conv({}) == xla_flags.CPU_CONV_FLAG


def test_flag_is_not_added_on_opt_out_or_when_the_user_chose_ynn_fusions():
  assert xla_flags.xla_flags_with_cpu_conv({'SENET_NO_XLA_FLAGS': '1'}) is None
  own = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
  assert xla_flags.xla_flags_with_cpu_conv({'XLA_FLAGS': own}) is None


def test_old_jaxlib_gets_no_unknown_flag(monkeypatch):
  monkeypatch.setattr(xla_flags, '_jaxlib_version', lambda: (0, 6, 2))
  assert xla_flags.xla_flags_with_cpu_conv({}) is None


@pytest.mark.parametrize('flags, engine', [
    ('', 'ynn'),
    (xla_flags.CPU_CONV_FLAG, 'eigen'),
    ('--xla_cpu_experimental_ynn_fusion_type=+individual_dot', 'ynn'),
    ('--xla_cpu_experimental_ynn_fusion_type=individual_dot', 'eigen'),
    ('--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution', 'ynn'),
    ('--xla_cpu_experimental_ynn_fusion_type=', 'eigen'),
    (f'{xla_flags.CPU_CONV_FLAG} --xla_cpu_experimental_ynn_fusion_type=+individual_dot', 'ynn'),
])
def test_engine_is_read_from_xla_flags(flags, engine):
  assert xla_flags.cpu_conv_engine({'XLA_FLAGS': flags}) == engine


_PROBE = '''
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
hlo = jax.jit(conv).lower(jnp.ones((4, 32, 32, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print('YNN' if 'ynn_fusion' in hlo else 'OTHER')
'''


@pytest.mark.parametrize('flags', ['', xla_flags.CPU_CONV_FLAG])
def test_xla_runs_convolutions_where_cpu_conv_engine_says(flags):
  # Guards the assumption that jaxlib's default sends convolutions to YNNPACK and the flag
  # takes them away: if a jaxlib changes either, 'auto' would tune for the wrong engine.
  # (YNNPACK only takes convolutions above a size, hence 4x32x32x32.)
  if xla_flags._jaxlib_version() < xla_flags.MIN_JAXLIB:
    pytest.skip('jaxlib without YNNPACK convolutions')
  env = {'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()[-1]
  assert out == {'ynn': 'YNN', 'eigen': 'OTHER'}[xla_flags.cpu_conv_engine(env)]
