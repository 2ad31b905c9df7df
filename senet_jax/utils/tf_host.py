"""TensorFlow stays on the host: its accelerators are hidden as soon as it is imported.

A training process may never import TensorFlow (config.input_backend='grain', the default; it
need not even be installed: the optional extra, requirements-tf.txt), or import it late (the
tf.data iterator, a gs:// path through tf.io.gfile). Importing it up front only to hide the
accelerators would cost every run its import (~4-6 s); hiding it later could be too late
(TensorFlow claims a GPU's memory when it initialises its devices). So
`hide_accelerators_on_import` hooks the import itself: the devices are hidden right after
`tensorflow` has executed, before anything can run an op.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys


# TensorFlow is an optional extra (requirements-tf.txt): how a user installs it.
TF_INSTALL = 'make tf, or pip install -r requirements-tf.txt'


def require_tensorflow(purpose: str) -> None:
  """MissingDependencyError ("`purpose` needs TensorFlow, which is not installed (...)") when
  TensorFlow is not installed; looked up, not imported (a config check costs no TF import)."""
  if 'tensorflow' in sys.modules and sys.modules['tensorflow'] is not None:
    return
  if importlib.util.find_spec('tensorflow') is None:
    from senet_jax.errors import MissingDependencyError
    raise MissingDependencyError(f'{purpose} needs TensorFlow, which is not installed '
                                 f'({TF_INSTALL})')


def hide_accelerators(tf) -> None:
  """Makes GPUs and TPUs invisible to TensorFlow (module `tf`): JAX owns them."""
  tf.config.set_visible_devices([], 'GPU')
  if tf.config.list_physical_devices('TPU'):
    tf.config.set_visible_devices([], 'TPU')


class _HideOnImport(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` with the other finders and hides accelerators after it executes.

  Probes such as `importlib.util.find_spec('tensorflow')` (etils asks whether TensorFlow is
  installed) also reach this finder: each found spec gets the wrapper, only an executed
  module runs it, and the finder leaves sys.meta_path then.
  """

  def __init__(self):
    self._finding = False

  def find_spec(self, fullname, path=None, target=None):
    """The spec of `tensorflow` whose loader hides the accelerators; None for other names."""
    if fullname != 'tensorflow' or self._finding:
      return None
    self._finding = True  # the lookup below goes through sys.meta_path again
    try:
      spec = importlib.util.find_spec(fullname)
    finally:
      self._finding = False
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_hide(module):
      exec_module(module)
      if self in sys.meta_path:
        sys.meta_path.remove(self)
      hide_accelerators(module)
    spec.loader.exec_module = exec_and_hide
    return spec


def hide_accelerators_on_import() -> None:
  """Hides accelerators from TensorFlow now if it is imported, else when it is."""
  if 'tensorflow' in sys.modules:
    hide_accelerators(sys.modules['tensorflow'])
  elif not any(isinstance(f, _HideOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _HideOnImport())
