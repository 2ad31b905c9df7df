"""The test suite's own cost rules (tests/suite_cost.py): the flags its processes compile with,
and the slow list naming tests that exist."""
import os
import re

import suite_cost

TESTS = os.path.dirname(os.path.abspath(__file__))
COUNT = '--xla_force_host_platform_device_count'


def test_subprocess_env_appends_the_device_count_to_the_parents_flags(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', f'--xla_backend_optimization_level=0 {COUNT}=2 --xla_foo=1')
  env = suite_cost.host_devices_env(8, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  # The parent's other flags stay, in order; its device count is replaced, not duplicated.
  assert env['XLA_FLAGS'].split() == ['--xla_backend_optimization_level=0', '--xla_foo=1',
                                      f'{COUNT}=8']
  assert env['JAX_PLATFORMS'] == 'cpu' and env['JAX_CPU_COLLECTIVES_IMPLEMENTATION'] == 'gloo'
  assert env['PATH'] == os.environ['PATH']  # the rest of this process's environment
  monkeypatch.delenv('XLA_FLAGS')
  assert suite_cost.host_devices_env(4)['XLA_FLAGS'] == f'{COUNT}=4'


def test_the_test_level_is_appended_once_and_a_chosen_level_or_opt_out_wins():
  env = {'XLA_FLAGS': '--xla_foo=1'}
  suite_cost.fast_compile_xla_flags(env)
  suite_cost.fast_compile_xla_flags(env)
  assert env['XLA_FLAGS'].split() == ['--xla_foo=1', suite_cost.TEST_XLA_FLAG]
  chosen = {'XLA_FLAGS': '--xla_backend_optimization_level=2'}
  suite_cost.fast_compile_xla_flags(chosen)
  assert chosen['XLA_FLAGS'] == '--xla_backend_optimization_level=2'
  opted_out = {'SENET_TEST_XLA_OPT': 'default'}
  suite_cost.fast_compile_xla_flags(opted_out)
  assert 'XLA_FLAGS' not in opted_out


def test_every_slow_entry_names_a_test_that_exists():
  """A renamed test would silently move back into `make test`: each entry's file must define
  its function (the parameters are pytest's, not checked here)."""
  for node in suite_cost.SLOW:
    path, name = node.split('::')[0], node.split('::')[-1].split('[')[0]
    with open(os.path.join(os.path.dirname(TESTS), path)) as f:
      assert re.search(rf'^def {name}\(', f.read(), re.M), node
