"""Shared test helpers. Tests run on CPU; TensorFlow never sees an accelerator."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# timm/torchvision (test requirements of the converter parity tests) segfault in triton's
# native import when TensorFlow was imported first in the same process; import them before any
# test module pulls in TensorFlow, so the suite does not depend on test collection order.
try:
  import timm  # noqa: E402,F401
  import torchvision  # noqa: E402,F401
except ImportError:
  pass

import suite_cost  # noqa: E402  (beside this file)

suite_cost.fast_compile_xla_flags()  # before JAX reads XLA_FLAGS
import senet_jax  # noqa: E402,F401  (sets the XLA:CPU flags main.py runs with)
import jax  # noqa: E402

# Halves XLA:CPU compile time of parameter init (random streams differ; tests never pin them).
jax.config.update('jax_threefry_partitionable', False)

# One persistent compilation cache per test session, shared by the xdist workers and the
# main.py subprocesses (they inherit the variable): the trainer tests compile the same tiny
# training step many times. Never the user's ~/.cache, so a run's time does not depend on
# what earlier runs left there.
_CACHE_CREATED = suite_cost.session_compilation_cache()
jax.config.update('jax_compilation_cache_dir', os.environ[suite_cost.CACHE_VARIABLE])
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from senet_jax.models import create_model  # noqa: E402
from senet_jax.models.layers import count_params  # noqa: E402

# Tiny widths that keep every structural feature of a family (stages, projections, groups).
TINY_RESNET = dict(stage_sizes=(1, 1, 1, 1), stage_planes=(8, 16, 16, 32), stem_width=8)
TINY_EFFICIENTNET = dict(
    blocks=('r1_k3_s11_e1_i8_o8_se0.25', 'r2_k3_s22_e6_i8_o16_se0.25',
            'r1_k5_s22_e6_i16_o24_se0.25'),
    stem_channels=8, head_channels=32)


def init_variables(model, size=32, batch=2, train=False, seed=0):
  """Real (allocated) variables for a small input."""
  x = jnp.ones((batch, size, size, 3), jnp.float32)
  init = jax.jit(model.init, static_argnames='train')
  return init({'params': jax.random.key(seed), 'dropout': jax.random.key(seed + 1)}, x,
              train=train)


def abstract_variables(model, size=32, batch=2):
  """The variables' shapes and dtypes (jax.eval_shape: traced, never compiled or allocated)."""
  x = jnp.ones((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def abstract_param_count(name, size=224, **overrides):
  """Parameter count of a registered model via jax.eval_shape (no compile, no allocation)."""
  model = create_model(name, **overrides)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  return count_params(shapes['params'])


def params_without_gradient(model, size=32, batch=4) -> list[str]:
  """Names of parameters whose gradient is exactly zero in one training-mode step."""
  import numpy as np
  variables = init_variables(model, size=size, train=True)
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'], rngs={'dropout': jax.random.key(2)})
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

  grads = jax.jit(jax.grad(loss))(variables['params'])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  return [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """The offline digits dataset built once per test worker."""
  from senet_jax.data import digits
  path = str(tmp_path_factory.mktemp('tfds'))
  digits.build(path, 32)
  return path


def pytest_collection_modifyitems(config, items):
  """Marks the tests listed in suite_cost.SLOW as slow (`make test` leaves them out)."""
  suite_cost.mark_slow(items)


def pytest_unconfigure(config):
  """Removes the session's compilation cache (in the process that created it)."""
  suite_cost.remove_compilation_cache(_CACHE_CREATED)
