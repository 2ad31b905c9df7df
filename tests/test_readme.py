"""README.md's Python snippets run as pasted: in order, in one session (one namespace)."""
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def python_snippets(text: str) -> list[str]:
  """The bodies of the ```python fenced blocks, in order."""
  return re.findall(r'^```python\n(.*?)^```', text, flags=re.S | re.M)


NEEDS_NETWORK = '# needs: network'  # first line of a block that downloads (not run here)


def runnable(snippets: list[str]) -> list[str]:
  """The snippets that run offline: those not starting with NEEDS_NETWORK."""
  return [s for s in snippets if not s.startswith(NEEDS_NETWORK)]


def test_snippet_extraction():
  text = 'a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n'
  assert python_snippets(text) == ['x = 1\n', 'y = x\n']
  assert runnable(['x = 1\n', NEEDS_NETWORK + '\nget()\n']) == ['x = 1\n']


def test_readme_python_snippets_run_as_pasted(capsys):
  with open(README) as f:
    snippets = runnable(python_snippets(f.read()))
  assert len(snippets) >= 3
  namespace = {'__name__': '__readme__'}
  for i, code in enumerate(snippets, start=1):
    exec(compile(code, f'README.md python snippet {i}', 'exec'), namespace)  # noqa: S102
  # What the Models snippets say in their comments.
  assert namespace['logits'].shape == (2, 10) and namespace['logits'].dtype == np.float32
  assert namespace['gates']['SE_2_1'].shape == (2, 1, 1, 64)
  assert 'models, e.g.' in capsys.readouterr().out
