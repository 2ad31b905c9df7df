"""The allocator re-exec decision: jemalloc, else mimalloc from pip (speed: benchmarks/allocator.py)."""
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


def test_nothing_to_do_without_jemalloc_or_mimalloc(monkeypatch):
  monkeypatch.setattr(allocator, 'find_jemalloc', lambda: None)
  monkeypatch.setattr(allocator, 'find_mimalloc', lambda: None)
  assert allocator.jemalloc_env({}) is None


def test_mimalloc_from_pip_without_jemalloc_keeps_freed_pages(monkeypatch):
  monkeypatch.setattr(allocator, 'find_jemalloc', lambda: None)
  monkeypatch.setattr(allocator, 'find_mimalloc', lambda: '/venv/libmimalloc.so.3')
  env = allocator.jemalloc_env({'PATH': '/bin'})
  assert env['LD_PRELOAD'] == '/venv/libmimalloc.so.3' and env['MIMALLOC_PURGE_DELAY'] == '-1'
  assert 'MALLOC_CONF' not in env and env['SENET_NO_JEMALLOC'] == '1'
  assert allocator.jemalloc_env(env) is None  # the re-executed process does not loop
  assert allocator.jemalloc_env({'SENET_NO_JEMALLOC': '1'}) is None
