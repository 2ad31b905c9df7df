"""The CPU convolution flag: when it is added, how the engine is read back, and that XLA obeys."""
import os
import subprocess
import sys

import pytest

from senet_jax.utils import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
import senet_jax  # after `import jax` but before any computation: still in time
from senet_jax.utils import xla_flags
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
hlo = jax.jit(conv).lower(jnp.ones((4, 32, 32, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print('YNN' if 'ynn_fusion' in hlo else 'OTHER', xla_flags.cpu_conv_engine())
'''


@pytest.mark.parametrize('env, engine', [({}, 'eigen'), ({'SENET_NO_XLA_FLAGS': '1'}, 'ynn')])
def test_import_sets_the_flag_and_xla_runs_convolutions_where_cpu_conv_engine_says(env, engine):
  # `import senet_jax` alone must give a plain script main.py's engine (and the opt-out must
  # keep jaxlib's default). Also guards the assumption that jaxlib's default sends convolutions
  # to YNNPACK and the flag takes them away: if a jaxlib changes either, 'auto' would tune for
  # the wrong engine. (YNNPACK only takes convolutions above a size, hence 4x32x32x32.)
  if xla_flags._jaxlib_version() < xla_flags.MIN_JAXLIB:
    pytest.skip('jaxlib without YNNPACK convolutions')
  env = {'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT, **env}
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out[-1] == engine
  assert out[-2] == {'ynn': 'YNN', 'eigen': 'OTHER'}[engine]


def test_too_late_warns_once_and_leaves_xla_flags_alone(monkeypatch):
  import jax
  jax.numpy.ones(1)  # the backend is running in this process
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  monkeypatch.delenv('SENET_NO_XLA_FLAGS', raising=False)
  monkeypatch.setattr(xla_flags, '_warned', False)
  with pytest.warns(UserWarning, match='imported after JAX started its CPU backend') as record:
    assert xla_flags.configure_xla_cpu() is False
    assert xla_flags.configure_xla_cpu() is False
  assert len(record) == 1
  assert os.environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=1'


def test_in_time_appends_the_flag(monkeypatch):
  monkeypatch.setattr(xla_flags, '_backend_started', lambda: False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  monkeypatch.delenv('SENET_NO_XLA_FLAGS', raising=False)
  assert xla_flags.configure_xla_cpu() is True
  assert os.environ['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=1',
                                             xla_flags.CPU_CONV_FLAG]
