"""README.md's Python snippets run as pasted: in order, in one session (one namespace)."""
import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def python_snippets(text: str) -> list[str]:
  """The bodies of the ```python fenced blocks, in order."""
  return re.findall(r'^```python\n(.*?)^```', text, flags=re.S | re.M)


def test_snippet_extraction():
  text = 'a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n'
  assert python_snippets(text) == ['x = 1\n', 'y = x\n']


def test_readme_python_snippets_run_as_pasted(capsys):
  with open(README) as f:
    snippets = python_snippets(f.read())
  assert len(snippets) >= 3
  namespace = {'__name__': '__readme__'}
  for i, code in enumerate(snippets, start=1):
    exec(compile(code, f'README.md python snippet {i}', 'exec'), namespace)  # noqa: S102
  # What the Models snippets say in their comments.
  assert namespace['logits'].shape == (2, 10) and namespace['logits'].dtype == np.float32
  assert namespace['gates']['SE_2_1'].shape == (2, 1, 1, 64)
  assert 'models, e.g.' in capsys.readouterr().out
