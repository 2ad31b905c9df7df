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


def test_only_plain_scripts_are_restarted(tmp_path):
  script = tmp_path / 'train_mine.py'
  script.write_text('')
  run = lambda argv, orig, modules=(): allocator.is_restartable_script(argv, orig, modules)
  assert run([str(script), '--lr=1'], ['python3', str(script), '--lr=1'])
  assert run([str(script)], ['python3', '-m', 'train_mine'])  # `python -m` (argv[0] = file)
  assert not run(['-c'], ['python3', '-c', 'import senet_jax'])
  assert not run([''], ['python3'])  # the REPL
  assert not run([str(script)], ['python3', '-i', str(script)])
  assert not run([str(script)], ['python3', str(script)], {'pytest': None})
  assert not run([str(script)], ['python3', str(script)], {'ipykernel': None})
  assert not run([str(tmp_path / 'missing.py')], ['python3', 'missing.py'])


def _run_script(tmp_path, body, *args, env=None):
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / 'mine').mkdir(exist_ok=True)
  (tmp_path / 'mine' / '__init__.py').write_text('')
  (tmp_path / 'mine' / 'script.py').write_text(body)
  base = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'SENET_NO_JEMALLOC')}
  base.update({'PYTHONPATH': repo, **(env or {})})
  return subprocess.run([sys.executable, *args], cwd=tmp_path, env=base, capture_output=True,
                        text=True, timeout=120, check=True).stdout


BODY = '''import sys
print('start', __name__, __package__ or '-', sys.argv[1:])
import senet_jax, os
print('preload', os.environ.get('LD_PRELOAD', ''))
'''


def test_import_never_restarts_a_script(tmp_path):
  out = _run_script(tmp_path, BODY, 'mine/script.py', '--flag=1').splitlines()
  # Each line once: `import senet_jax` has no effect on the process (issue 32).
  assert out == ["start __main__ - ['--flag=1']", 'preload ']


OPT_IN = BODY.replace('import senet_jax, os', 'import senet_jax, os; senet_jax.use_fast_allocator()')


def test_the_opt_ins_run_a_script_once_under_the_fast_allocator(tmp_path):
  import pytest
  if allocator.jemalloc_env({}) is None:
    pytest.skip('neither jemalloc nor mimalloc (requirements.txt) is installed')
  # `python -m senet_jax.run`: a new process image before the script starts: each line once.
  out = _run_script(tmp_path, BODY, '-m', 'senet_jax.run', 'mine/script.py', '--flag=1')
  out = out.splitlines()
  assert out[0] == "start __main__ - ['--flag=1']" and len(out) == 2 and 'malloc' in out[1]
  out = _run_script(tmp_path, BODY, '-m', 'senet_jax.run', '-m', 'mine.script', 'x').splitlines()
  assert out[0] == "start __main__ mine ['x']" and 'malloc' in out[1]  # `-m` kept
  # use_fast_allocator(): a restart, so the lines before the call ran twice, the rest once.
  out = _run_script(tmp_path, OPT_IN, 'mine/script.py', '--flag=1').splitlines()
  assert out[:2] == ["start __main__ - ['--flag=1']"] * 2 and len(out) == 3
  assert 'malloc' in out[2]
  out = _run_script(tmp_path, OPT_IN, 'mine/script.py', env={'SENET_NO_JEMALLOC': '1'})
  assert out.splitlines() == ['start __main__ - []', 'preload ']
  out = _run_script(tmp_path, OPT_IN, '-c', OPT_IN)
  assert out.splitlines()[0] == 'start __main__ - []' and len(out.splitlines()) == 2
