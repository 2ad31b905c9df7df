"""Config checks that run before any compute; every error names the config field.

Each field's own rule (type, range, choices) is in schema.py, stated once; this module holds
the rules that need more than one value: two fields (epochs vs steps), the devices (batch vs
mesh), the data (classes, split sizes), a registry (model, optimizer and schedule names) or the
built model (model_kwargs, the sections' image sizes).
"""
from __future__ import annotations

import math
import os

from senet_jax.config import schema
from senet_jax.config.schema import MIN_RESOLUTION
from senet_jax.errors import ConfigError  # noqa: F401 (re-exported: defined in the leaf module)
from senet_jax.models import list_models, min_resolution, model_info
from senet_jax.training import distill, optim, progressive, sharding
from senet_jax.utils.names import suggest


def validate_fields(config, eval_only: bool = False) -> None:
  """Raises ConfigError for a field of the wrong type or range (schema.py), an unknown model,
  optimizer or schedule, no run length or a missing init_from: the checks that need no
  devices, data or TensorFlow, so main.py runs them first (a mistyped flag then fails in about
  two seconds instead of after TensorFlow's import, ~8 s)."""
  problem = schema.check_fields(config)
  if problem:
    raise ConfigError(problem)
  if not eval_only and config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise ConfigError('set config.num_epochs > 0 or config.num_train_steps > 0')
  for field, allowed in (('optimizer', optim.OPTIMIZERS), ('lr_schedule', optim.SCHEDULES)):
    if config[field] not in allowed:
      raise ConfigError(f'config.{field}={config[field]!r}; allowed: {list(allowed)}'
                        f'{suggest(config[field], allowed)}')
  if (config.init_from and not config.init_from.startswith('hf:')  # hub: resolved at start
      and not os.path.exists(config.init_from)):
    raise ConfigError(f'config.init_from={config.init_from!r} does not exist (expected a '
                      f"training workdir, a converter output or 'hf:owner/name')")
  if config.model not in list_models():
    raise ConfigError(f'config.model={config.model!r} is not a registered model'
                      f'{suggest(config.model, list_models())} (all models: '
                      f'python -c "import senet_jax.models as m; print(m.list_models())")')


def validate_config(config, workdir: str, device_count: int, process_count: int,
                    eval_only: bool = False) -> None:
  """Raises ConfigError for the first invalid field (nothing has been computed yet)."""
  validate_fields(config, eval_only)  # each field's own rule first: the rest may rely on them
  validate_mesh(config, device_count)
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value % device_count or value % process_count:
      raise ConfigError(f'config.{field}={value} must be a positive multiple of the device '
                        f'count ({device_count}) and the process count ({process_count})')
  if config.batch_size % (config.grad_accum_steps * device_count):
    raise ConfigError(f'config.grad_accum_steps={config.grad_accum_steps}: batch_size '
                      f'{config.batch_size} must split into that many micro-batches with '
                      f'every device getting the same share of each')
  _check_workdir(workdir)
  model_info(config.model)  # registry errors are already clear
  model = check_model_kwargs(config)
  check_sections(config, model, eval_only)
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


def check_model_kwargs(config):
  """Builds the model and traces its init (no compute) so bad model_kwargs fail here; returns
  the model.

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
  return model


def check_sections(config, model, eval_only: bool = False) -> None:
  """The progressive and distill sections' own checks (they otherwise run after the state is
  created and compiled): image sizes against what `model` accepts, a registered teacher."""
  if config.get('progressive') is not None and config.progressive.num_stages > 0:
    progressive.check_config(config.progressive, config.augment,
                             max(min_resolution(model), MIN_RESOLUTION))
  if not eval_only and config.get('distill') is not None and config.distill.teacher:
    distill.check_config(config.distill)


def check_data(config, eval_only: bool = False) -> None:
  """Opens the train and eval splits so a missing dataset or an empty split fails before
  compute, then checks the config against them (check_against_data)."""
  from senet_jax.data import pipeline
  if config.get('input_backend') == 'tfdata':  # the optional extra (requirements-tf.txt)
    from senet_jax.utils import tf_host
    tf_host.require_tensorflow("config.input_backend='tfdata'")
  else:
    from senet_jax.data import grain_pipeline
    grain_pipeline.check_interpolation(config.interpolation)
  fields = ('eval_split',) if eval_only else ('train_split', 'eval_split')
  sources = {field: _open_split(pipeline, config, field) for field in fields}
  try:
    classes = pipeline.num_classes_of(sources['eval_split'])
  except (KeyError, AttributeError, TypeError):  # no 'label' class feature: nothing to compare
    classes = None
  train = sources.get('train_split')
  check_against_data(config, None if train is None else len(train), classes)


def _open_split(pipeline, config, field: str):
  split = config[field]
  try:
    source = pipeline.open_source(config.dataset, split, config.data_dir)
  except ValueError as err:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if message.startswith('config.'):  # the dataset's own errors name config.dataset
      raise ConfigError(message) from None
    if f'split {split!r}' in message:
      raise ConfigError(f'{message} (config.{field})') from None
    if 'Paths sequence can not be of 0 length' in message:  # ArrayRecord: an empty slice
      raise ConfigError(f'config.{field}={split!r} selects no examples of '
                        f'{config.dataset!r}') from None
    raise ConfigError(f'config.{field}={split!r} of {config.dataset!r} cannot be read: '
                      f'{message}') from None
  if len(source) == 0:
    raise ConfigError(f'config.{field}={split!r} selects no examples of {config.dataset!r}')
  return source


def training_length(config, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps): num_train_steps when > 0, else num_epochs epochs.

  The rule (check_against_data enforces it before training): exactly one of num_epochs and
  num_train_steps sets the length; both > 0 is an error unless they give the same number of
  steps. Why not 'one silently wins': every config file sets num_epochs (recipes, warmup and
  decay are in epochs), so a user adding --config.num_train_steps=40 would have either that
  or the file's epochs ignored without a word (issue 36: 40 steps asked, 2,200 trained). An
  error naming both fields and the flag to add costs one flag; a wrong-length run costs hours.
  """
  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  if config.num_train_steps > 0:
    return steps_per_epoch, int(config.num_train_steps)
  return steps_per_epoch, max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)


def check_against_data(config, num_train_examples: int | None = None,
                       dataset_num_classes: int | None = None) -> None:
  """Raises ConfigError when the config does not fit the opened dataset: fewer classes than
  its labels, a global batch larger than the train split, num_epochs and num_train_steps
  disagreeing, more progressive stages than steps, or an eval interval under one step. None
  skips the checks that need it."""
  # A head wider than the dataset's label set is legitimate (timm and TF-slim allow it: a
  # 1001-way ImageNet head, a pretrained head kept for fine-tuning); a narrower one is not.
  if dataset_num_classes is not None and config.num_classes < dataset_num_classes:
    raise ConfigError(f'config.num_classes={config.num_classes} is smaller than the '
                      f'{dataset_num_classes} classes of {config.dataset!r} (labels 0..'
                      f'{dataset_num_classes - 1}): set config.num_classes='
                      f'{dataset_num_classes}')
  if num_train_examples is None:
    return
  if config.batch_size > num_train_examples:
    raise ConfigError(f'config.batch_size={config.batch_size} is larger than the train split '
                      f'config.train_split={config.train_split!r} ({num_train_examples} '
                      f'examples): not one full batch per epoch')
  steps_per_epoch, total_steps = training_length(config, num_train_examples)
  if config.num_epochs > 0 and config.num_train_steps > 0:
    by_epochs = max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
    if by_epochs != total_steps:
      raise ConfigError(
          f'config.num_train_steps={config.num_train_steps} and config.num_epochs='
          f'{config.num_epochs} (= {by_epochs} steps, {steps_per_epoch} per epoch) disagree '
          f'on the run length: set config.num_epochs=0 to train by steps, or '
          f'config.num_train_steps=-1 to train by epochs')
  stages = config.progressive.num_stages if config.get('progressive') is not None else 0
  if stages > total_steps:  # else it fails after the state is created (progressive.py)
    raise ConfigError(f'config.progressive.num_stages={stages} must be in [1, total steps '
                      f'({total_steps})]')
  every = config.eval_every_epochs
  if every > 0 and int(every * steps_per_epoch) < 1:  # train.py's interval, in whole steps
    minimum = math.ceil(1e4 / steps_per_epoch) / 1e4
    raise ConfigError(f'config.eval_every_epochs={every} is {every * steps_per_epoch:.3g} '
                      f'steps at {steps_per_epoch} steps per epoch, under one step: use >= '
                      f'{minimum} (one step), or <= 0 to evaluate only at the end')


def validate_model_input(config, model) -> None:
  """Raises ConfigError when config.image_size is below what the built model accepts."""
  minimum = min_resolution(model)
  if config.image_size < minimum:
    hint = " (or set config.model_kwargs.padding='same')" if hasattr(model, 'padding') else ''
    raise ConfigError(f'config.image_size={config.image_size} is too small for '
                      f'{config.model}: it needs >= {minimum}{hint}')


def validate_mesh(config, device_count: int) -> None:
  """Raises ConfigError when config.mesh_data x config.mesh_fsdp cannot be laid out on
  `device_count` devices or cannot split the (micro-)batches evenly over the mesh."""
  try:
    data, fsdp = sharding.resolve_mesh_shape(config.mesh_data, config.mesh_fsdp, device_count)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  accum = max(int(config.grad_accum_steps), 1)
  for field, per_step in (('batch_size', accum), ('eval_batch_size', 1)):
    if config[field] > 0 and config[field] % (per_step * data * fsdp):
      raise ConfigError(
          f'config.{field}={config[field]} cannot be split over the mesh config.mesh_data={data}'
          f' x config.mesh_fsdp={fsdp}' + (f' in {accum} micro-batches' if per_step > 1 else '')
          + f': it must be a multiple of {per_step * data * fsdp}')
