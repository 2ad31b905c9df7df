"""--config paths relative to the clone work from any directory."""
import os

from senet_jax.utils import paths


def test_config_flag_resolves_from_the_clone_when_not_in_the_working_directory(tmp_path,
                                                                                monkeypatch):
  monkeypatch.chdir(tmp_path)
  quickstart = os.path.join(paths.REPO_ROOT, 'configs', 'quickstart.py')
  assert os.path.isfile(quickstart)
  argv = ['main.py', '--config=configs/quickstart.py', '--workdir=w', '--config',
          'configs/sweeps/se_gate.py:quick', '--config.seed=1']
  assert paths.resolve_config_flag(argv) == [
      'main.py', f'--config={quickstart}', '--workdir=w', '--config',
      os.path.join(paths.REPO_ROOT, 'configs', 'sweeps', 'se_gate.py') + ':quick',
      '--config.seed=1']
  # A file in the working directory wins; a path found nowhere is left for the error message.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'quickstart.py').write_text('')
  assert paths.resolve_repo_path('configs/quickstart.py') == 'configs/quickstart.py'
  assert paths.resolve_repo_path('configs/nope.py') == 'configs/nope.py'
