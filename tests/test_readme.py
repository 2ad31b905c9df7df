"""README.md and docs/*.md stay true to the code.

- Their Python snippets run as pasted: README's in order in one session (one namespace), each
  docs page's in a namespace of its own. Blocks starting with '# needs: network' are skipped.
- The README's sample output has the line formats of a real `main.py` run (numbers aside).
- Every relative link resolves, every docs page has a title and a way back to the README, and
  every `main.py` command in docs/ uses flags and config fields that exist.
- The README stays a front page (at most MAX_README_LINES lines).
"""
import glob
import logging
import os
import re

import numpy as np
import pytest

import train
from senet_jax.training import progress
from test_launch import flag_problems, main_invocations
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DOCS = sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
MAX_README_LINES = 350  # issue 36: a front page read in ten minutes (~300 lines), detail in docs/
NEEDS_NETWORK = '# needs: network'  # first line of a block that downloads (not run here)


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def python_snippets(text: str) -> list[str]:
  """The bodies of the ```python fenced blocks, in order."""
  return re.findall(r'^```python\n(.*?)^```', text, flags=re.S | re.M)


def runnable(snippets: list[str]) -> list[str]:
  """The snippets that run offline: those not starting with NEEDS_NETWORK."""
  return [s for s in snippets if not s.startswith(NEEDS_NETWORK)]


def run_snippets(path: str) -> dict:
  """Runs the runnable Python snippets of one file in order in one namespace; returns it."""
  namespace = {'__name__': '__readme__'}
  for i, code in enumerate(runnable(python_snippets(read(path))), start=1):
    where = f'{os.path.relpath(path, ROOT)} python snippet {i}'
    exec(compile(code, where, 'exec'), namespace)  # noqa: S102
  return namespace


def test_snippet_extraction():
  text = 'a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n'
  assert python_snippets(text) == ['x = 1\n', 'y = x\n']
  assert runnable(['x = 1\n', NEEDS_NETWORK + '\nget()\n']) == ['x = 1\n']


def test_readme_python_snippets_run_as_pasted(capsys):
  assert len(runnable(python_snippets(read(README)))) >= 3
  namespace = run_snippets(README)
  # What the Models snippets say in their comments.
  assert namespace['logits'].shape == (2, 10) and namespace['logits'].dtype == np.float32
  assert namespace['gates']['SE_2_1'].shape == (2, 1, 1, 64)
  assert 'models, e.g.' in capsys.readouterr().out


DOCS_WITH_SNIPPETS = [p for p in DOCS if runnable(python_snippets(read(p)))]


@pytest.mark.parametrize('path', DOCS_WITH_SNIPPETS, ids=os.path.basename)
def test_docs_python_snippets_run_as_pasted(path):
  run_snippets(path)


def test_every_docs_page_with_python_is_run():
  # The pages whose Python moved out of the README; a page losing its snippets by accident
  # (a broken fence) would drop out of the test above silently.
  names = {os.path.basename(p) for p in DOCS_WITH_SNIPPETS}
  assert {'features.md', 'models.md', 'nnx.md'} <= names, names


# ---- the front page --------------------------------------------------------------------------

def test_readme_is_a_front_page():
  lines = read(README).splitlines()
  assert len(lines) <= MAX_README_LINES, f'README.md has {len(lines)} lines: move detail to docs/'
  linked = set(relative_links(read(README)))
  unlinked = [os.path.relpath(p, ROOT) for p in DOCS if os.path.relpath(p, ROOT) not in linked]
  assert not unlinked, f'docs pages the README does not link: {unlinked}'


# ---- links -----------------------------------------------------------------------------------

def relative_links(text: str) -> list[str]:
  """Targets of the markdown links and images that point into the repository (no URL, no
  in-page anchor), without their '#fragment'; code blocks are left out."""
  text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
  targets = re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text)
  return [t.split('#')[0] for t in targets
          if not re.match(r'[a-z][a-z0-9+.-]*:', t) and not t.startswith('#')]


def test_link_extraction():
  text = ('see [a](docs/a.md), ![p](docs/p.png), [web](https://x.org/a.md), [top](#top), '
          '[s](b.md#part), [t](c.md "title")\n```\n[not](in/code.md)\n```\n')
  assert relative_links(text) == ['docs/a.md', 'docs/p.png', 'b.md', 'c.md']


@pytest.mark.parametrize('path', [README] + DOCS, ids=os.path.basename)
def test_relative_links_point_to_existing_files(path):
  base = os.path.dirname(path)
  missing = [t for t in relative_links(read(path))
             if not os.path.exists(os.path.normpath(os.path.join(base, t)))]
  assert not missing, f'{os.path.relpath(path, ROOT)} links to missing files: {missing}'


@pytest.mark.parametrize('path', DOCS, ids=os.path.basename)
def test_docs_pages_have_a_title_and_link_back(path):
  lines = read(path).splitlines()
  assert lines[0].startswith('# '), lines[0]
  assert '../README.md' in relative_links('\n'.join(lines[:4])), 'no link back to the README'


@pytest.mark.parametrize('path', [p for p in DOCS if main_invocations(read(p))
                                  and not p.endswith('launch.md')],
                         ids=os.path.basename)
def test_main_py_commands_in_docs_use_flags_and_fields_that_exist(path):
  # The README and docs/launch.md are checked in test_launch.py; the rest moved out of the
  # README and keep that check here.
  for flags in main_invocations(read(path)):
    assert flag_problems(flags) == [], flags


# ---- the sample output -----------------------------------------------------------------------

NUMBER = r'(?<![A-Za-z_])\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?'


def line_pattern(line: str) -> str:
  """A regex for `line` with every number (not a digit inside a name) made any number."""
  parts = re.split(f'({NUMBER})', line)
  return ''.join(NUMBER if i % 2 else re.escape(part) for i, part in enumerate(parts))


def test_line_pattern_generalises_numbers_only():
  pattern = line_pattern('model se_resnet18: 316,914 parameters | lr 1.3009e-06 | ETA 0:12')
  assert re.fullmatch(pattern, 'model se_resnet18: 24,250 parameters | lr 0.05 | ETA 1:02')
  assert not re.fullmatch(pattern, 'model se_resnet50: 24,250 parameters | lr 0.05 | ETA 0:01')
  step = line_pattern('step 50/330 | loss 0.9531 | top1 67.72%')
  assert re.fullmatch(step, 'step 6/6 | loss 2.3026 | top1 9.38%')
  assert not re.fullmatch(step, 'step 6/6 | loss 2.3026 | top-1 9.38%')


def readme_sample_output() -> list[str]:
  """The lines of the quickstart's sample output in the README ('...' lines left out): the
  first plain ``` block of the 'Two commands' section."""
  section = read(README).split('\n## Two commands\n', 1)[1].split('\n## ', 1)[0]
  block = next(body for lang, body in re.findall(r'^```(\w*)\n(.*?)^```', section,
                                                 flags=re.S | re.M) if not lang)
  return [line for line in block.splitlines() if line.strip() and line.strip() != '...']


def test_readme_sample_output_has_the_format_of_a_real_run(digits_dir, tmp_path, caplog):
  sample = readme_sample_output()
  # What the sample must show (issue 36: it had gone stale, without `ece`).
  for start in ('model ', 'compiling the train step ... done in', 'step ', 'eval at step ',
                'final eval: '):
    assert any(line.startswith(start) for line in sample), start
  assert all(' ece ' in line for line in sample if 'eval' in line and 'top1' in line)
  # The real thing: the trainer on the tiny quickstart (6 steps), in this process (a main.py
  # subprocess took 50 s under load, mostly imports), and main.py's closing line, which it
  # prints from the results as below.
  with open(os.path.join(ROOT, 'senet_jax', 'main.py')) as f:
    assert "print(f'final eval: {progress.format_results(results)}')" in f.read()
  caplog.set_level(logging.INFO)
  results = train.train_and_evaluate(tiny_config(digits_dir), str(tmp_path / 'run'))
  real = [r.getMessage() for r in caplog.records]
  real.append(f'final eval: {progress.format_results(results)}')
  unmatched = [line for line in sample
               if not any(re.fullmatch(line_pattern(line), r) for r in real)]
  assert not unmatched, ('README sample lines a real run no longer prints (update the README '
                         f'from `make quickstart`): {unmatched}\nreal run:\n' + '\n'.join(real))
