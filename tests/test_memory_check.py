"""The training step's memory estimate (senet_jax/training/memory.py) and main.py's refusal of a
step that cannot fit, before anything compiles."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from senet_jax.errors import ConfigError
from senet_jax.models import builder
from senet_jax.training import memory, optim, sharding, steps
from senet_jax.training.state import init_train_state
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2 ** 20


def _setup(config):
  model = builder.build_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                              conv_impl=config.conv_impl, model_kwargs=config.model_kwargs)
  schedule = optim.create_schedule(config, 100, 1000)
  optimizer = optim.create_optimizer(config, schedule)
  return model, optimizer, schedule


def test_state_bytes_follow_the_fsdp_rule():
  # Hand-computed: a (4, 6) float32 kernel splits 2 ways over fsdp=2 (48 of 96 bytes), a (3,)
  # bias no factor of 2 divides stays whole (12 bytes); the step counter is never sharded.
  tree = {'step': jax.ShapeDtypeStruct((), jnp.int32),
          'params': {'kernel': jax.ShapeDtypeStruct((4, 6), jnp.float32),
                     'bias': jax.ShapeDtypeStruct((3,), jnp.float32)}}
  assert memory.state_bytes(tree['params'], 1) == 96 + 12
  assert memory.state_bytes(tree['params'], 2) == 48 + 12


def test_residuals_of_a_product_are_its_inputs():
  # d(x*w)/dw needs x, d/dx needs w: the backward keeps both (4 + 4 float32 = 32 bytes).
  x = jax.ShapeDtypeStruct((4,), jnp.float32)
  assert memory.residual_bytes(lambda w, v: jnp.sum(jnp.sin(v) * w), x, x) >= 16


def test_estimate_is_a_lower_bound_of_what_xla_allocates(digits_dir):
  """The estimate stays below XLA's own accounting of the compiled step (arguments + outputs -
  aliased + temporaries) and within a factor 2.5 of it (measured 0.62 on this network)."""
  config = tiny_config(digits_dir)
  model, optimizer, schedule = _setup(config)
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  shape = (1, config.image_size, config.image_size, 3)
  state = jax.eval_shape(lambda r: init_train_state(model, optimizer, r, shape),
                         jax.random.PRNGKey(0))
  estimate = memory.estimate_step(model, state, config, config.batch_size, 1)
  shardings = sharding.state_shardings(state, mesh)
  data = sharding.batch_sharding(mesh)
  b, r = config.batch_size, config.image_size
  batch = {'image': jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32, sharding=data),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
           'mask': jax.ShapeDtypeStruct((b,), jnp.float32, sharding=data)}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          state, shardings)
  step = jax.jit(steps.make_train_step(model, optimizer, config, schedule),
                 in_shardings=(shardings, data), out_shardings=(shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,))
  m = step.lower(abstract, batch).compile().memory_analysis()
  xla = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
         + m.temp_size_in_bytes)
  assert estimate.activations > 0 and estimate.batch == b * r * r * 3 * 4
  assert xla / 2.5 <= estimate.total <= xla, (estimate, xla / MIB)


def test_check_refuses_in_one_line_naming_batch_resolution_and_memory(digits_dir, monkeypatch):
  config = tiny_config(digits_dir)
  model, optimizer, _ = _setup(config)
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  estimate = memory.check_fits(config, model, optimizer, mesh)  # this machine: it fits
  assert estimate is not None and estimate.total < 100 * MIB
  monkeypatch.setattr(memory, 'host_available_bytes', lambda: estimate.total // 2)
  with pytest.raises(ConfigError) as err:
    memory.check_fits(config, model, optimizer, mesh)
  message = str(err.value)
  assert '\n' not in message
  for part in ('config.batch_size=32', 'config.image_size=32', 'host RAM available',
               'config.memory_check=False', 'config.batch_size'):
    assert part in message, message
  config.memory_check = False
  assert memory.check_fits(config, model, optimizer, mesh) is None


BIG = '''
import ml_collections
from senet_jax.configs import quickstart


def get_config():
  """EfficientNet-B0 at 448 px, batch 1024: > 300 GiB for one training step."""
  config = quickstart.get_config()
  config.model = 'efficientnet_b0'
  config.model_kwargs = ml_collections.ConfigDict()
  config.image_size = 448
  config.batch_size = 1024
  return config
'''


def test_main_refuses_a_step_that_cannot_fit_before_compiling(digits_dir, tmp_path):
  if (memory.host_available_bytes() or 0) > 250 * 2 ** 30:
    pytest.skip('this host has more memory than the step needs')
  (tmp_path / 'big.py').write_text(BIG)
  run = subprocess.run([sys.executable, 'main.py', f'--config={tmp_path / "big.py"}',
                        f'--workdir={tmp_path / "run"}', f'--config.data_dir={digits_dir}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-3000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, run.stderr[-3000:]
  assert errors[0].startswith('error: bad config: config.batch_size=1024 at '
                              'config.image_size=448 needs at least ')
  assert 'GiB of host RAM available' in errors[0]
  assert 'compiling' not in run.stderr and 'Traceback' not in run.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
