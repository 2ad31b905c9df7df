"""The jemalloc re-exec decision (the speed effect is measured by benchmarks/)."""
from senet_jax.utils import allocator


def test_no_reexec_when_opted_out_or_already_preloaded(monkeypatch):
  monkeypatch.setattr(allocator, 'find_jemalloc', lambda: '/lib/libjemalloc.so.2')
  assert allocator.jemalloc_env({'SENET_NO_JEMALLOC': '1'}) is None
  assert allocator.jemalloc_env({'LD_PRELOAD': '/x/libjemalloc.so.2'}) is None


def test_reexec_env_preloads_and_disables_decay(monkeypatch):
  monkeypatch.setattr(allocator, 'find_jemalloc', lambda: '/lib/libjemalloc.so.2')
  env = allocator.jemalloc_env({'LD_PRELOAD': '/other.so', 'PATH': '/bin'})
  assert env['LD_PRELOAD'] == '/lib/libjemalloc.so.2 /other.so'
  assert env['MALLOC_CONF'] == allocator.MALLOC_CONF and env['SENET_NO_JEMALLOC'] == '1'
  assert env['PATH'] == '/bin'


def test_nothing_to_do_without_jemalloc(monkeypatch):
  monkeypatch.setattr(allocator, 'find_jemalloc', lambda: None)
  assert allocator.jemalloc_env({}) is None
