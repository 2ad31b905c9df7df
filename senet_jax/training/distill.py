"""Knowledge distillation (Hinton et al., 2015): a frozen teacher's soft labels guide training.

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

The T^2 factor keeps the soft term's gradient scale independent of the temperature T.

The teacher is any senet_jax checkpoint (a trained run or weights written by
`python -m senet_jax.convert`), with its own resolution and input normalisation: the student's
batch is un-normalised, resized and re-normalised on device. Its logits are computed inside the
jitted train step on the same mesh (batch sharded like the student's, teacher variables
replicated), in eval mode (running BatchNorm statistics, no dropout), under `stop_gradient`;
the teacher has no optimizer state and no EMA.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from senet_jax.config import schema
from senet_jax.errors import ConfigError

_RESIZE = {'bicubic': 'cubic', 'bilinear': 'linear'}


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      label_loss: jax.Array, temperature: float, alpha: float) -> jax.Array:
  """Per-example `(1 - alpha) * label_loss + alpha * T^2 * KL(teacher_T || student_T)`."""
  t = jnp.float32(temperature)
  log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
  return (1.0 - alpha) * label_loss + alpha * t * t * kl


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: module, variables (on device) and how it wants its input."""
  module: Any
  variables: dict
  image_size: int
  mean_rgb: tuple[float, ...]
  std_rgb: tuple[float, ...]
  interpolation: str

  def prepare(self, images: jax.Array, mean_rgb, std_rgb) -> jax.Array:
    """Student-normalised NHWC images -> the teacher's resolution and normalisation."""
    pixels = images.astype(jnp.float32) * jnp.asarray(std_rgb) + jnp.asarray(mean_rgb)
    if images.shape[1:3] != (self.image_size, self.image_size):
      shape = (images.shape[0], self.image_size, self.image_size, images.shape[3])
      pixels = jax.image.resize(pixels, shape, _RESIZE.get(self.interpolation, 'linear'))
    return (pixels - jnp.asarray(self.mean_rgb)) / jnp.asarray(self.std_rgb)

  def logits(self, images: jax.Array, mean_rgb, std_rgb) -> jax.Array:
    """Eval-mode teacher logits (float32) without gradient."""
    out = self.module.apply(jax.lax.stop_gradient(self.variables),
                            self.prepare(images, mean_rgb, std_rgb), train=False)
    return jax.lax.stop_gradient(out.astype(jnp.float32))


def check_config(distill) -> None:
  """Raises ConfigError naming the first invalid `config.distill` field: the section's own
  rules (config/schema.py), then whether the teacher's model is registered."""
  from senet_jax.models import list_models
  from senet_jax.utils.names import suggest
  problem = schema.problem_of('distill', distill)
  if problem:
    raise ConfigError(problem)
  if distill.model not in list_models():
    raise ConfigError(f'config.distill.model={distill.model!r} is not a registered model'
                      f'{suggest(distill.model, list_models())}')


def load_teacher(config, sharding, build_model: Callable, load_params: Callable
                 ) -> Teacher | None:
  """The teacher of `config.distill`, its variables placed with `sharding`; None when off.

  `build_model` is the package's one model builder (`models.builder.build_model`, with the
  run's conv_impl bound) and `load_params` the checkpoint module's (passed in so this module
  stays free of the trainer's imports).
  """
  distill = config.get('distill')
  if distill is None or not distill.teacher:
    return None
  check_config(distill)
  module = build_model(distill.model, num_classes=config.num_classes, dtype=config.dtype,
                       model_kwargs=dict(distill.model_kwargs))
  try:
    loaded = load_params(distill.teacher)
  except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: name the field
    raise ConfigError(f'config.distill.teacher={distill.teacher!r}: cannot load a senet_jax '
                      f'checkpoint ({str(err).splitlines()[0]})') from err
  variables = {k: loaded[k] for k in ('params', 'batch_stats') if k in loaded}
  size = distill.image_size or config.image_size
  expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  want = jax.tree.map(lambda a: a.shape, dict(expected))
  got = jax.tree.map(lambda a: tuple(a.shape), variables)
  if want != got:
    raise ConfigError(f'config.distill.teacher={distill.teacher!r} does not match '
                      f'config.distill.model={distill.model!r} with {config.num_classes} classes '
                      '(different parameter names or shapes)')
  return Teacher(module, jax.device_put(variables, sharding), size,
                 tuple(distill.mean_rgb or config.mean_rgb),
                 tuple(distill.std_rgb or config.std_rgb),
                 distill.interpolation or config.interpolation)


def jit_with_teacher(step_fn: Callable, teacher: Teacher, config, state_shardings,
                     data_sharding, replicated) -> Callable:
  """jit(step_fn) with the teacher's logits added to each batch as 'teacher_logits'.

  Returns `train_step(state, batch)`; the teacher variables are an argument of the compiled
  step (not constants baked into it), replicated over the mesh.
  """
  mean, std = tuple(config.mean_rgb), tuple(config.std_rgb)

  def step(state, batch, teacher_variables):
    frozen = dataclasses.replace(teacher, variables=teacher_variables)
    batch = {**batch, 'teacher_logits': frozen.logits(batch['image'], mean, std)}
    return step_fn(state, batch)

  teacher_shardings = jax.tree.map(lambda _: replicated, teacher.variables)
  jitted = jax.jit(step, in_shardings=(state_shardings, data_sharding, teacher_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return lambda state, batch: jitted(state, batch, teacher.variables)
