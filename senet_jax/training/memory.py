"""The training step's memory per device, estimated from shapes before anything compiles.

`check_fits(config, model, optimizer, mesh)` (the trainer calls it before creating the state)
refuses a step that cannot fit with one ConfigError line naming the batch, the resolution, the
estimate and what is available, instead of a run the OS kills mid-compile without a word (the
fine-tune recipe at batch 1024 x 224 px asked 22.5 GB of a CPU machine: SIGKILL, a stale lock).

What is counted (`estimate_step`), per device:
  state        params, batch_stats, optimizer slots and EMA copies, sharded by the fsdp rule
  gradients    one params-sized buffer
  batch        the input images of one step
  activations  half of what the forward pass saves for the backward (the residuals of
               jax.vjp, from jax.eval_shape: no compile) for one micro-batch, less the params'
               size (weights the backward reads are the params' own buffers); with
               config.remat, what remat keeps. Half: XLA fuses some of the saved values away
               (its temporaries measured 0.71-1.0 of them).
It is a LOWER bound by design, so that a run that fits is never refused: XLA's other
temporaries (the optimizer update, fusion outputs, convolution workspaces), the input pipeline
and the runtime itself are left out. Against XLA:CPU's own accounting of the compiled step
(`compiled.memory_analysis()`: arguments + outputs - aliased + temporaries), measured
2026-12-06 (jax 0.10.2, float32, CPU; tests/test_memory_check.py keeps the bound):
  se_resnet18, quickstart widths, 32 px, batch 64:  11 of  15 MiB (0.73)
  efficientnet_b0, 96 px, batch 16:                 312 of 394 MiB (0.79)
  se_resnet50, 64 px, batch 32:                     635 of 709 MiB (0.90)
  se_resnet50, 64 px, batch 32, remat=block:        438 of 746 MiB (0.59: XLA:CPU keeps
                                                     what remat would free)
Available memory: on CPU the host's MemAvailable (/proc/meminfo), shared by every local CPU
device; on GPU / TPU the device's `memory_stats()['bytes_limit']` (skipped when unknown).
`config.memory_check=False` turns the check off.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.errors import ConfigError
from senet_jax.training import remat as remat_lib
from senet_jax.training import sharding

GIB = 2 ** 30
# The share of the forward's saved values counted: XLA fuses some away (module docstring).
XLA_KEEPS = 0.5


def _nbytes(x) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def state_bytes(state, fsdp: int) -> int:
  """Per-device bytes of a TrainState (arrays or ShapeDtypeStructs) under the fsdp rule with
  axis size `fsdp` (1: replicated); needs no mesh, so any size can be asked about."""
  total = 0
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    top = getattr(path[0], 'name', None)
    splits = ((1,) * x.ndim if top in sharding.UNSHARDED_FIELDS else
              sharding.fsdp_splits(x.shape, fsdp))
    shard = [d // s for d, s in zip(x.shape, splits)]
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def residual_bytes(fn, diff, *rest) -> int:
  """Bytes of the values the forward pass of `fn(diff, *rest)` saves for its backward (jax.vjp
  with respect to the pytree `diff`), from abstract shapes."""
  def saved(d, *r):
    return jax.tree.leaves(jax.vjp(lambda x: fn(x, *r), d)[1])
  return sum(_nbytes(x) for x in jax.eval_shape(saved, diff, *rest))


def activation_bytes(model, params, batch_stats, batch: int, image_size: int,
                     input_dtype=jnp.float32, remat: str = 'none', policy: str = 'nothing') -> int:
  """What the training forward of `batch` images saves for the backward (shapes only), less
  the params' size: among the saved values are weights the backward reads, which are the
  params' own buffers (a lower bound then: not every weight is saved)."""
  def forward(p, stats, image):
    return model.apply({'params': p, 'batch_stats': stats}, image, train=True,
                       mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})[0]
  step = remat_lib.rematerialize(forward, remat, policy)
  loss = lambda p, s, x: jnp.mean(step(p, s, x).astype(jnp.float32))
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), input_dtype)
  saved = residual_bytes(loss, params, batch_stats, images)
  return max(saved - sum(_nbytes(x) for x in jax.tree.leaves(params)), 0)


@dataclasses.dataclass
class Estimate:
  """Bytes per device of one training step, by part (see the module docstring)."""
  state: int
  gradients: int
  batch: int
  activations: int

  @property
  def total(self) -> int:
    return self.state + self.gradients + self.batch + self.activations


def estimate_step(model, state, config, per_device_batch: int, fsdp: int = 1) -> Estimate:
  """The lower-bound memory of one training step on one device; `state` may be abstract."""
  input_dtype = jnp.dtype(config.input_dtype)
  micro = max(per_device_batch // max(int(config.grad_accum_steps), 1), 1)
  saved = activation_bytes(model, state.params, state.batch_stats, micro, config.image_size,
                           input_dtype, config.remat, config.remat_policy)
  image = config.image_size ** 2 * 3 * input_dtype.itemsize
  return Estimate(state=state_bytes(state, fsdp), gradients=state_bytes(state.params, fsdp),
                  batch=per_device_batch * image, activations=int(saved * XLA_KEEPS))


def host_available_bytes() -> int | None:
  """The host's available memory (MemAvailable: free plus reclaimable caches), or None."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:  # not Linux: free physical pages
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def available_bytes(devices) -> tuple[int | None, int, str]:
  """(bytes available, how many of `devices` share them, a description) for the local devices:
  the host's memory for CPU devices (all share it), one device's memory limit otherwise."""
  device = devices[0]
  if device.platform == 'cpu':
    return host_available_bytes(), len(devices), 'host RAM available'
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # noqa: BLE001 - a backend without memory statistics: nothing to compare
    limit = None
  return limit, 1, f'{device.platform.upper()} memory per device'


def _size(n: float) -> str:
  return f'{n / GIB:.1f} GiB' if n >= GIB / 10 else f'{n / 2 ** 20:.0f} MiB'


def check_fits(config, model, optimizer, mesh) -> Estimate | None:
  """Raises ConfigError when the step's estimate exceeds the memory available to it; returns the
  estimate (None when the check is off or the available memory is unknown). Shapes only: call
  it before the state is created and the step compiled."""
  if not config.get('memory_check', True):
    return None
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  available, sharing, where = available_bytes(local)
  if not available:
    return None
  from senet_jax.training.state import init_train_state
  shape = (1, config.image_size, config.image_size, 3)
  state = jax.eval_shape(lambda r: init_train_state(model, optimizer, r, shape),
                         jax.random.PRNGKey(0))  # the trainer's raw key (a uint32 leaf)
  per_device_batch = config.batch_size // mesh.devices.size
  estimate = estimate_step(model, state, config, per_device_batch, sharding.fsdp_size(mesh))
  needed = estimate.total * sharing
  if needed <= available:
    return estimate
  on_cpu = local[0].platform == 'cpu'
  # XLA:CPU's temporaries do not shrink with remat, and CPU devices share one host's memory.
  advice = ('a smaller config.batch_size, or config.grad_accum_steps' if on_cpu else
            'a smaller config.batch_size, config.remat=block, config.mesh_fsdp=-1 (the state '
            'sharded over the devices) or config.grad_accum_steps')
  raise ConfigError(
      f'config.batch_size={config.batch_size} at config.image_size={config.image_size} needs '
      f'at least {_size(needed)} for a training step of {config.model}'
      f'{f" on {sharing} CPU devices" if sharing > 1 else ""} (activations '
      f'{_size(estimate.activations * sharing)}, state {_size(estimate.state * sharing)}), more '
      f'than the {_size(available)} of {where}: use {advice}; config.memory_check=False skips '
      f'this check')
