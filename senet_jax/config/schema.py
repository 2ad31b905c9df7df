"""Every config field, once: its default, its rule, whether a resume may change it, one line of
doc. configs/default.py, the field checks (check_fields), the resume diff (diff.py) and the
did-you-mean suggestions are all read from this table.

Adding a config field: one `Field(...)` entry here, and the code that reads it (docs/training.md,
"Adding a config field"). Rules that involve two fields, the devices, the data or a registry
(batch vs devices, epochs vs steps, model and optimizer names) are in validate.py.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import ml_collections

from senet_jax.config.checks import (FRACTION, NON_NEG, POSITIVE_INT, Checker, boolean,
                                     choice, crop_fraction, crop_range, described, integer,
                                     mapping, mesh_axis, model_kwargs, noted, number, numbers_of,
                                     optional_text, pair, regex, step_range, text, unset_or)

MIN_RESOLUTION = 32  # the ImageNet networks downsample by 32 (progressive learning's floor)
RESIZE_METHODS = ('bilinear', 'bicubic', 'nearest', 'area', 'lanczos3', 'lanczos5', 'gaussian',
                  'mitchellcubic')


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. `default` is a value or a zero-argument factory (a fresh ConfigDict, a
  path read from the environment). `harmless`: changing it on resume leaves the trained weights
  as they are (diff.py). A section (progressive, distill) lists its own Fields in `fields`."""
  name: str
  default: Any
  check: Checker
  doc: str
  harmless: bool = False
  fields: tuple[Field, ...] = ()

  def default_value(self):
    """The default as the config holds it (a section: a ConfigDict of its fields' defaults)."""
    if self.fields:
      return ml_collections.ConfigDict({f.name: f.default_value() for f in self.fields})
    return self.default() if callable(self.default) else self.default


def section(name: str, doc: str, fields: tuple[Field, ...], expected: str,
            rules: tuple[Callable, ...] = ()) -> Field:
  """A Field holding a mapping checked key by key (a missing key is checked at its default),
  then by `rules` (each returns (key, expected) or None). A problem names the key, so
  check_fields prints 'config.<section>.<key>=<value>: expected ...': one line, not the
  whole section."""
  def check(v):
    if not hasattr(v, 'items'):
      return expected
    for f in fields:
      problem = f.check(v[f.name] if f.name in v else f.default_value())
      if problem:
        return f.name, problem
    return next((p for p in (rule(v) for rule in rules) if p), None)
  return Field(name, None, check, doc, fields=_unique(fields))


def _unique(fields: tuple[Field, ...]) -> tuple[Field, ...]:
  """The fields, refusing a name declared twice (a dict literal would keep the last silently)."""
  names = [f.name for f in fields]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f'config fields declared twice in the schema: {twice}')
  return fields


def _teacher_needs_a_model(v):
  if v.get('teacher') and not v.get('model'):
    return 'model', 'the teacher architecture (a registered model name)'
  return None


def _cache_dir() -> str:
  # SENET_COMPILATION_CACHE_DIR overrides the default; the test session points it at a tmp dir.
  return os.environ.get('SENET_COMPILATION_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'senet_jax', 'xla')


_DTYPES = ('float32', 'bfloat16')

# Progressive learning (EfficientNetV2 paper, Algorithm 1): num_stages M > 0 splits training
# into M equal stages; stage i trains at an image size and with regularisation interpolated
# linearly from the (first, last) pairs. Evaluation stays at config.image_size.
PROGRESSIVE = (
    Field('num_stages', 0, noted(integer(0), '0: off'), '0: off; M > 0 equal stages'),
    Field('image_size', (128, 300), pair(integer(MIN_RESOLUTION)),
          'training resolution of the first / last stage'),
    Field('dropout_rate', (0.1, 0.3), pair(FRACTION),
          "model dropout_rate (replaces the model's own)"),
    Field('randaugment_magnitude', (5.0, 15.0), pair(number(0, 30)),
          "needs augment='randaugment'"),
    Field('mixup_alpha', (0.0, 0.0), pair(NON_NEG), 'mixup alpha of the first / last stage'),
    Field('size_multiple', 8, integer(1), 'intermediate sizes rounded to a multiple of this'),
)

# Knowledge distillation: loss = (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T ||
# student_T), the teacher frozen (eval mode, no gradient, no EMA) and run inside the train step.
DISTILL = (
    Field('teacher', '', described(text(), "a checkpoint directory or '' (off)"),
          "senet_jax checkpoint dir (trained or converted); '' off"),
    Field('model', '', text(), "the teacher's registered model name"),
    Field('model_kwargs', ml_collections.ConfigDict, mapping,
          'its create_model fields (e.g. layout)'),
    Field('image_size', 0, noted(integer(0), '0: config.image_size'),
          'teacher input size; 0: config.image_size'),
    Field('mean_rgb', (), unset_or(numbers_of(3, number(0, 255)), ()),
          'teacher normalisation; (): config.mean_rgb / std_rgb'),
    Field('std_rgb', (), unset_or(numbers_of(3, number(0, lo_open=True)), ()),
          "teacher std; (): config.std_rgb"),
    Field('interpolation', '', unset_or(choice(*RESIZE_METHODS)),
          "resize to image_size; '': config.interpolation"),
    Field('temperature', 4.0, number(0, lo_open=True), 'T (Hinton et al.)'),
    Field('alpha', 0.5, number(0, 1), 'weight of the soft (teacher) term'),
)

SCHEMA = _unique((
    Field('seed', 0, integer(0), 'seed of the initialisation, data order and augmentation'),
    # ---- Model
    Field('model', 'se_resnet50', text(False),  # registry membership checked in validate.py
          'any name from senet_jax.models.list_models()'),
    # Passed to create_model(config.model, **model_kwargs). Variant files list the knobs they
    # expose (e.g. se_reduction, se_position) so that the command line can override them.
    Field('model_kwargs', ml_collections.ConfigDict, model_kwargs,  # and by building the model
          'fields passed to create_model(config.model, **model_kwargs)'),
    Field('dtype', 'float32', choice(*_DTYPES), 'compute dtype (params stay float32)'),
    # ---- Data
    Field('dataset', 'imagenet2012', text(False),  # existence checked by opening it
          "TFDS name; 'senet_digits' is the offline dataset"),
    Field('data_dir', lambda: ml_collections.config_dict.placeholder(str), optional_text,
          "TFDS data_dir (None: TFDS's default)", harmless=True),
    Field('train_split', 'train', text(False), 'TFDS split trained on'),
    Field('eval_split', 'validation', text(False), 'TFDS split evaluated', harmless=True),
    Field('num_classes', 1000, POSITIVE_INT,
          ">= the dataset's label count (checked); more is allowed"),
    # The floor here is the smallest network's (tf_tutorial_convnet, 2 pools); the chosen
    # model's own minimum (32 for the ImageNet networks) is checked against the built model.
    Field('image_size', 224, integer(4), 'training and evaluation resolution (>= the '
          "model's minimum, 32 for the ImageNet networks)"),
    Field('eval_crop_fraction', -1.0, crop_fraction,
          'center-crop fraction; -1: res / (res + 32) (official)', harmless=True),
    Field('interpolation', 'bicubic', choice(*RESIZE_METHODS), 'resize method'),
    Field('mean_rgb', (0.485 * 255, 0.456 * 255, 0.406 * 255), numbers_of(3, number(0, 255)),
          'per-channel mean subtracted from the pixels (0..255)'),
    Field('std_rgb', (0.229 * 255, 0.224 * 255, 0.225 * 255),
          numbers_of(3, number(0, lo_open=True)), 'per-channel std the pixels are divided by'),
    Field('crop_area_range', (0.08, 1.0), crop_range,
          'Inception random crop: fraction of the image area'),
    Field('random_flip', True, boolean, 'horizontal flip at training time'),
    Field('input_dtype', 'float32', choice(*_DTYPES), 'dtype of the batches the pipeline yields'),
    # 'grain' (Grain + libjpeg-turbo/numpy, no TensorFlow: senet_jax/data/grain_pipeline.py,
    # bilinear/bicubic) or 'tfdata' (TensorFlow decodes and augments; the optional extra,
    # requirements-tf.txt). Same order and resume; other random draws. validate.check_data
    # checks the pair before compute.
    Field('input_backend', 'grain', choice('grain', 'tfdata'), 'input pipeline backend'),
    Field('augment', 'none', choice('none', 'autoaugment', 'randaugment'),
          "'autoaugment' is policy v0"),
    Field('randaugment_num_layers', 2, integer(0), 'RandAugment N'),
    Field('randaugment_magnitude', 10.0, number(0, 30),
          'RandAugment M (float: progressive stages interpolate)'),
    Field('mixup_alpha', 0.0, NON_NEG, '> 0 enables mixup'),
    Field('cutmix_alpha', 0.0, NON_NEG, '> 0 enables cutmix'),
    # ---- Optimisation
    Field('batch_size', 256, POSITIVE_INT, 'global batch, all hosts and devices together'),
    Field('eval_batch_size', 256, POSITIVE_INT, 'global eval batch', harmless=True),
    Field('grad_accum_steps', 1, POSITIVE_INT, 'micro-batches per optimizer step'),
    # The run's length: num_epochs > 0 (ceil(num_epochs * steps per epoch)) or num_train_steps
    # > 0, the other <= 0. Both > 0 is an error unless they give the same number of steps
    # (neither silently wins: the defaults set num_epochs, so `--config.num_train_steps=40`
    # alone would otherwise be ignored or ignore it); to train by steps add
    # `--config.num_epochs=0`. validate.training_length / check_against_data.
    Field('num_epochs', 100.0, number(), '> 0: length in epochs'),
    Field('num_train_steps', -1, integer(), '> 0: length in steps (with num_epochs=0)'),
    Field('optimizer', 'sgd', text(False),  # checked against optim.OPTIMIZERS in validate.py
          "'sgd', 'rmsprop_tf', 'adamw', 'lars', 'lamb'"),
    Field('learning_rate', 0.1, number(0, lo_open=True), 'per 256 images; scaled by batch/256'),
    Field('lr_schedule', 'cosine', text(False),  # checked against optim.SCHEDULES
          "'cosine', 'exponential' (staircase), 'step', 'linear', 'constant', 'poly'"),
    Field('warmup_epochs', 5.0, NON_NEG, 'linear warmup length'),
    Field('lr_decay_epochs', 2.4, number(0, lo_open=True),
          'exponential: decay every this many epochs'),
    Field('lr_decay_factor', 0.97, number(0, 1, lo_open=True),
          'exponential: multiply by this at each decay'),
    Field('lr_step_epochs', (30, 60, 90), numbers_of(None, NON_NEG, increasing=True),
          'step: divide by 10 at these epochs'),
    Field('momentum', 0.9, FRACTION, 'SGD / RMSProp momentum'),
    Field('nesterov', True, boolean, 'Nesterov momentum (SGD)'),
    Field('rmsprop_decay', 0.9, FRACTION, 'RMSProp decay'),
    Field('rmsprop_epsilon', 1e-3, number(0, lo_open=True), 'RMSProp epsilon'),
    # LARS / LAMB ('lars', 'lamb'): weight_decay is applied inside the update (not in the
    # loss), and parameters matching weight_decay_exclude skip both it and the trust ratio.
    Field('lars_trust_coefficient', 1e-3, number(0, lo_open=True),
          'LARS eta (tf.contrib LARSOptimizer, MLPerf)'),
    Field('lars_epsilon', 0.0, NON_NEG, "LARS: added to the trust ratio's denominator"),
    Field('lr_poly_power', 2.0, number(0, lo_open=True),
          "'poly' schedule: (1 - t/T)^power (MLPerf ResNet-50)"),
    Field('weight_decay', 1e-4, NON_NEG, 'L2 term in the loss'),
    # re.search on 'module/.../param'; the default matches BN scales and biases.
    Field('weight_decay_exclude', r'(bn[^/]*/scale|bias)$', regex,
          'regex of the parameters without weight decay'),
    Field('label_smoothing', 0.1, FRACTION, 'label smoothing of the cross-entropy'),
    Field('grad_clip_norm', 0.0, NON_NEG, '> 0 clips the global gradient norm'),
    Field('ema_decay', 0.0, FRACTION, '> 0 keeps an EMA of the weights, evaluated too'),
    Field('ema_warmup', False, boolean, 'decay min(ema_decay, (1 + t) / (10 + t))'),
    # ---- Sections (senet_jax/training/progressive.py, senet_jax/training/distill.py)
    section('progressive', 'progressive learning (EfficientNetV2); num_stages=0: off',
            PROGRESSIVE, 'a mapping (num_stages, image_size, dropout_rate, ...)'),
    section('distill', "knowledge distillation from a frozen teacher; teacher='': off",
            DISTILL, 'a mapping (teacher, model, temperature, alpha, ...)',
            rules=(_teacher_needs_a_model,)),
    # ---- Checkpoints, logging, evaluation
    Field('log_every_steps', 100, POSITIVE_INT, 'steps between log lines', harmless=True),
    Field('eval_every_epochs', 1.0, number(),  # <= 0: only at the end
          '<= 0: only at the end; > 0 must be >= one step', harmless=True),
    Field('checkpoint_every_steps', 1000, POSITIVE_INT, 'steps between checkpoints',
          harmless=True),
    Field('keep_checkpoints', 3, POSITIVE_INT,  # 0 could leave a run with no checkpoint
          'checkpoints kept', harmless=True),
    Field('keep_best_checkpoint', True, boolean, 'also keep the best by eval top-1',
          harmless=True),
    # Comma separated (metrics '<name>_top1', 'ema_<name>_top1', ...): shipped 'imagenet',
    # 'real' (ImageNet-ReaL), 'v2', 'a', 'r', 'sketch' (senet_jax.evaluation.SHIPPED), names
    # defined in eval_definitions, or 'name=dataset:split' (checked by build_evaluators). The
    # main eval split keeps the plain names (top1, ema_top1, ...).
    Field('evals', '', text(), 'extra evaluators, comma separated', harmless=True),
    Field('eval_definitions', ml_collections.ConfigDict, mapping,
          'name -> dict(dataset, split, label_key, class_subset, image_size, crop_fraction, '
          'flip)', harmless=True),
    Field('eval_tta', 'none', choice('none', 'flip'),
          "'flip': mean of the probabilities of image and mirror", harmless=True),
    Field('init_from', '', text(),  # existence checked in validate.py
          'checkpoint dir to start from (fine-tuning)', harmless=True),
    Field('init_from_exclude', ('fc', 'classifier'), numbers_of(None, text(False)),
          'top-level params re-initialised on init_from', harmless=True),
    # JAX profiler trace of steps start+1 .. end (as the log lines count them) on process 0,
    # into workdir/profile (TensorBoard's profile tab, or xprof).
    Field('profile_steps', (), step_range, 'e.g. (100, 105); () is off', harmless=True),
    Field('profile', False, boolean, 'older switch: True = profile_steps (10, 15)',
          harmless=True),
    # 0: from the table in training/mfu.py by device kind (TPU v4/v5e/v5p/v6e, A100/H100/H200
    # bf16; none for CPU).
    Field('peak_flops_per_device', 0.0, NON_NEG,
          'peak FLOP/s of one device for the MFU in the log lines', harmless=True),
    # '' is off (wandb is not even imported); entity / mode from WANDB_ENTITY / WANDB_MODE.
    Field('wandb_project', '', text(), 'Weights & Biases project for the scalars',
          harmless=True),
    # Resuming with a config that changes the trajectory (a field without harmless=True) is an
    # error unless this is True; the change is then recorded in workdir/config_changes.json.
    Field('allow_config_change', False, boolean, 'resume with a changed trajectory anyway',
          harmless=True),
    # ---- Devices: mesh and memory. A data x fsdp mesh over every device (-1: the rest). The
    # batch is split over both axes; params, optimizer state and EMA are sharded over `fsdp`.
    # Elastic resume: the mesh and remat change the summation order / memory, not the run.
    Field('mesh_data', -1, mesh_axis, 'data axis size (-1: the rest of the devices)',
          harmless=True),  # divisibility checked in validate.validate_mesh
    Field('mesh_fsdp', 1, mesh_axis, 'fsdp axis size; 1: replicated state', harmless=True),
    # -1: one per TPU slice (1 on a single slice or without slices); n > 1 without slices: n
    # hosts, equal groups of consecutive processes (GPU nodes under Slurm). sharding.py.
    Field('mesh_dcn_data', -1, mesh_axis, 'DCN granules the data axis spans', harmless=True),
    # training/remat.py: 'block' recomputes each block's interior in the backward pass,
    # 'stage' keeps only each stage's input; 'conv' keeps convolution outputs.
    Field('remat', 'none', choice('none', 'block', 'stage'), 'rematerialisation regions',
          harmless=True),
    Field('remat_policy', 'nothing', choice('nothing', 'conv'), 'what a remat region saves',
          harmless=True),
    # The step's memory estimated from shapes (training/memory.py) before compiling.
    Field('memory_check', True, boolean, "refuse a step that cannot fit the device's memory",
          harmless=True),
    # ---- Speed
    Field('conv_impl', 'auto', text(False),  # checked by building the model
          "grouped/depthwise conv formulation ('auto', 'xla', ...)", harmless=True),
    # A rerun or resume skips most compilation (EfficientNet-B0 training step on CPU: 19.9 s
    # -> 3.9 s).
    Field('compilation_cache_dir', _cache_dir, text(),
          "persistent XLA compilation cache; '' turns it off", harmless=True),
))

FIELDS: dict[str, Field] = {f.name: f for f in SCHEMA}
HARMLESS = frozenset(f.name for f in SCHEMA if f.harmless)


def default_config() -> ml_collections.ConfigDict:
  """A ConfigDict of every field at its default (configs/default.py's get_config)."""
  config = ml_collections.ConfigDict()
  for f in SCHEMA:
    config[f.name] = f.default_value()
  return config


def is_harmless(dotted: str) -> bool:
  """Whether changing field `dotted` ('batch_size', 'distill.alpha') leaves the trajectory."""
  name, _, key = dotted.partition('.')
  field = FIELDS.get(name)
  if field is None:
    return False
  sub = {f.name: f for f in field.fields}.get(key.split('.')[0])
  return field.harmless or (sub is not None and sub.harmless)


def _show(value) -> str:
  """repr of a config value on one line (a ConfigDict's own repr is multi-line YAML)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  shown = repr(value)
  return shown if len(shown) <= 200 else shown[:197] + '...'


def problem_of(name: str, value) -> str | None:
  """'config.<name>=<value>: expected ...' (a section: 'config.<name>.<key>=...') or None."""
  problem = FIELDS[name].check(value)
  if isinstance(problem, tuple):
    key, problem = problem
    name, value = f'{name}.{key}', value.get(key)
  return f'config.{name}={_show(value)}: expected {problem}' if problem else None


def check_fields(config) -> str | None:
  """The first 'config.<field>=<value>: expected ...' error (for a section,
  'config.<section>.<key>=<value>: expected ...'), or None."""
  for name in FIELDS:
    if name in config:  # variant configs may drop a field; the code's own reads then fail
      problem = problem_of(name, config[name])
      if problem:
        return problem
  return None
