"""Config checks that run before any compute; every error names the config field."""
from __future__ import annotations

import os

from senet_jax.models import list_models, min_resolution, model_info
from senet_jax.training import config_fields, optim, remat, sharding

MIN_RESOLUTION = 32  # every registered network downsamples by 32


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and what was expected."""


def validate_fields(config) -> None:
  """Raises ConfigError for a field of the wrong type or range, or an unknown model: the checks
  that need no devices, data or TensorFlow, so main.py runs them first (a mistyped flag then
  fails in about two seconds instead of after TensorFlow's import)."""
  problem = config_fields.check_fields(config)
  if problem:
    raise ConfigError(problem)
  if config.model not in list_models():
    raise ConfigError(f'config.model={config.model!r} is not a registered model'
                      f'{config_fields.suggest(config.model, list_models())} (all models: '
                      f'python -c "import senet_jax.models as m; print(m.list_models())")')


def validate_config(config, workdir: str, device_count: int, process_count: int,
                    eval_only: bool = False) -> None:
  """Raises ConfigError for the first invalid field (nothing has been computed yet)."""
  validate_fields(config)
  validate_mesh(config, device_count)
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value <= 0 or value % device_count or value % process_count:
      raise ConfigError(f'config.{field}={value} must be a positive multiple of the device '
                        f'count ({device_count}) and the process count ({process_count})')
  if config.grad_accum_steps < 1 or config.batch_size % (config.grad_accum_steps * device_count):
    raise ConfigError(f'config.grad_accum_steps={config.grad_accum_steps}: batch_size '
                      f'{config.batch_size} must split into that many micro-batches with '
                      f'every device getting the same share of each')
  if not config.learning_rate > 0:
    raise ConfigError(f'config.learning_rate must be > 0, got {config.learning_rate}')
  if config.image_size < MIN_RESOLUTION:
    raise ConfigError(f'config.image_size={config.image_size} is too small: the networks '
                      f'downsample by 32, so it must be >= {MIN_RESOLUTION}')
  if not eval_only and config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise ConfigError('set config.num_epochs > 0 or config.num_train_steps > 0')
  if config.num_classes < 1:
    raise ConfigError(f'config.num_classes must be >= 1, got {config.num_classes}')
  if config.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f"config.dtype={config.dtype!r}; allowed: ['float32', 'bfloat16']")
  for field, allowed in (('optimizer', optim.OPTIMIZERS), ('lr_schedule', optim.SCHEDULES),
                         ('augment', ('none', 'autoaugment', 'randaugment'))):
    if config[field] not in allowed:
      raise ConfigError(f'config.{field}={config[field]!r}; allowed: {list(allowed)}'
                        f'{config_fields.suggest(config[field], allowed)}')
  if (config.init_from and not config.init_from.startswith('hf:')  # hub: resolved at start
      and not os.path.exists(config.init_from)):
    raise ConfigError(f'config.init_from={config.init_from!r} does not exist (expected a '
                      f"training workdir, a converter output or 'hf:owner/name')")
  _check_workdir(workdir)
  model_info(config.model)  # registry errors are already clear
  check_model_kwargs(config)
  check_data(config, eval_only)


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir!r} exists and is not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as err:
    raise ConfigError(f'--workdir={workdir!r} cannot be created ({err.strerror or err}); '
                      f'choose a writable directory') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir={workdir!r} is not writable; choose a writable directory')


def check_model_kwargs(config) -> None:
  """Builds the model and traces its init (no compute) so bad model_kwargs fail here.

  The trace runs at the smallest resolution the model accepts: shape errors of bad arguments
  (an SE stage that does not exist, a reduction of 0) show at any resolution.
  """
  import jax
  import jax.numpy as jnp
  from senet_jax.models import create_model
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault('conv_impl', config.conv_impl)
  try:
    model = create_model(config.model, num_classes=config.num_classes, **kwargs)
    size = max(min_resolution(model), MIN_RESOLUTION)
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                      train=False))
  except Exception as err:  # noqa: BLE001 - any failure here is the arguments' fault
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:400]
    raise ConfigError(f'config.model_kwargs (or config.conv_impl) do not build '
                      f'{config.model!r}: {first}') from None


def check_data(config, eval_only: bool = False) -> None:
  """Opens the train and eval splits so a missing dataset or split fails before compute."""
  from senet_jax.data import pipeline
  splits = [('eval_split', config.eval_split)]
  if not eval_only:
    splits.insert(0, ('train_split', config.train_split))
  for field, split in splits:
    try:
      pipeline.open_source(config.dataset, split, config.data_dir)
    except ValueError as err:
      raise ConfigError(f'{err} (config.{field})' if 'split' in str(err) else str(err)) from None


def validate_model_input(config, model) -> None:
  """Raises ConfigError when config.image_size is below what the built model accepts."""
  minimum = min_resolution(model)
  if config.image_size < minimum:
    hint = " (or set config.model_kwargs.padding='same')" if hasattr(model, 'padding') else ''
    raise ConfigError(f'config.image_size={config.image_size} is too small for '
                      f'{config.model}: it needs >= {minimum}{hint}')


def validate_mesh(config, device_count: int) -> None:
  """Raises ConfigError when config.mesh_data x config.mesh_fsdp cannot be laid out on
  `device_count` devices or cannot split the (micro-)batches evenly over the mesh, or when
  config.remat / remat_policy is unknown."""
  try:
    data, fsdp = sharding.resolve_mesh_shape(config.mesh_data, config.mesh_fsdp, device_count)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  for field, allowed in (('remat', remat.MODES), ('remat_policy', remat.POLICIES)):
    if config[field] not in allowed:
      raise ConfigError(f'config.{field}={config[field]!r}; allowed: {list(allowed)}')
  accum = max(int(config.grad_accum_steps), 1)
  for field, per_step in (('batch_size', accum), ('eval_batch_size', 1)):
    if config[field] > 0 and config[field] % (per_step * data * fsdp):
      raise ConfigError(
          f'config.{field}={config[field]} cannot be split over the mesh config.mesh_data={data}'
          f' x config.mesh_fsdp={fsdp}' + (f' in {accum} micro-batches' if per_step > 1 else '')
          + f': it must be a multiple of {per_step * data * fsdp}')
