"""What every field of configs/default.py accepts, as data: one checker per field.

`check_fields(config)` returns the first error as 'config.<field>=<value>: <expected>' (in a
section: 'config.<section>.<key>=<value>: ...'), always one line.
Cross-field rules (batch vs devices, epochs vs steps) live in validate.py. A new config field
needs an entry here (tests/test_config_validation.py fails otherwise).
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Any, Callable

from senet_jax.utils.names import suggest

Checker = Callable[[Any], str | None]  # None when valid, else what was expected

RESIZE_METHODS = ('bilinear', 'bicubic', 'nearest', 'area', 'lanczos3', 'lanczos5', 'gaussian',
                  'mitchellcubic')


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(lo: int | None = None) -> Checker:
  def check(v):
    if not _is_int(v) or (lo is not None and v < lo):
      return 'an integer' + (f' >= {lo}' if lo is not None else '')
    return None
  return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Checker:
  """A finite real number in [lo, hi] (open ends with lo_open / hi_open).

  inf and nan are refused for every float field: none of them means anything useful there
  (num_epochs=inf overflows, learning_rate=inf diverges at the first step).
  """
  def check(v):
    bad = (not _is_num(v) or not math.isfinite(v)
           or (lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if not bad:
      return None
    if hi is None:
      return 'a finite number' + ('' if lo is None else f' {">" if lo_open else ">="} {lo}')
    low = f'{"(" if lo_open else "["}{"-inf" if lo is None else lo}'
    return f'a finite number in {low}, {hi}{")" if hi_open else "]"}'
  return check


def choice(*allowed) -> Checker:
  def check(v):
    return None if v in allowed else f'one of {list(allowed)}' + suggest(v, allowed)
  return check


def boolean(v) -> str | None:
  return None if isinstance(v, bool) else 'True or False'


def text(allow_empty: bool = True) -> Checker:
  def check(v):
    if not isinstance(v, str) or (not allow_empty and not v):
      return 'a string' + ('' if allow_empty else ' (not empty)')
    return None
  return check


def optional_text(v) -> str | None:
  return None if v is None or isinstance(v, str) else 'a string or None'


def numbers_of(length: int | None, item: Checker, increasing: bool = False) -> Checker:
  """A tuple/list of `length` (any if None) items each passing `item`."""
  def check(v):
    what = f'a sequence of {length or "any number of"} items, each {item(object()) or ""}'
    if not isinstance(v, (tuple, list)) or (length is not None and len(v) != length):
      return what
    if any(item(x) for x in v) or (increasing and list(v) != sorted(v)):
      return what + (' (increasing)' if increasing else '')
    return None
  return check


def regex(v) -> str | None:
  if not isinstance(v, str):
    return 'a regular expression string'
  try:
    re.compile(v)
  except re.error as err:
    return f'a valid regular expression ({err})'
  return None


def mapping(v) -> str | None:
  return None if hasattr(v, 'items') else 'a mapping of keyword arguments'


def crop_fraction(v) -> str | None:
  if _is_num(v) and (v == -1 or 0 < v <= 1):
    return None
  return '-1 (res / (res + 32)) or a fraction in (0, 1]'


def crop_range(v) -> str | None:
  if (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_num(x) for x in v)
      and 0 < v[0] <= v[1] <= 1):
    return None
  return 'two fractions (min, max) with 0 < min <= max <= 1'


def _pair(value, item: Checker) -> bool:
  return isinstance(value, (tuple, list)) and len(value) == 2 and not any(item(x) for x in value)


# A section (progressive, distill, model_kwargs) names the key at fault: its checker returns
# (key, expected), which check_fields prints as 'config.<section>.<key>=<value>: expected ...'
# -- one line, not the whole section.
SectionProblem = tuple[str, str] | str | None


def progressive_section(v) -> SectionProblem:
  """config.progressive: stages and (first, last) pairs (augment is checked at train time)."""
  if not hasattr(v, 'items'):
    return 'a mapping (num_stages, image_size, dropout_rate, ...)'
  if integer(0)(v.get('num_stages')):
    return 'num_stages', 'an integer >= 0 (0: off)'
  pairs = {'image_size': integer(32), 'dropout_rate': number(0, 1, hi_open=True),
           'randaugment_magnitude': number(0, 30), 'mixup_alpha': number(0)}
  for knob, item in pairs.items():
    if knob in v and not _pair(v[knob], item):
      return knob, f'(first stage, last stage), each {item(object())}'
  if integer(1)(v.get('size_multiple', 8)):
    return 'size_multiple', 'an integer >= 1'
  return None


def distill_section(v) -> SectionProblem:
  """config.distill: teacher ('' = off), temperature > 0, alpha in [0, 1]."""
  if not hasattr(v, 'items'):
    return 'a mapping (teacher, model, temperature, alpha, ...)'
  if not isinstance(v.get('teacher', ''), str):
    return 'teacher', "a checkpoint directory or '' (off)"
  if v.get('teacher') and not v.get('model'):
    return 'model', 'the teacher architecture (a registered model name)'
  for key, item, default in (('temperature', number(0, lo_open=True), 1.0),
                             ('alpha', number(0, 1), 0.5), ('image_size', integer(0), 0)):
    problem = item(v.get(key, default))
    if problem:
      return key, problem + (' (0: config.image_size)' if key == 'image_size' else '')
  return None


# Structural model arguments (models/*.py dataclass fields) that build a network without any
# error at 0 (stage_sizes=(0, 0, 0, 0): a network with no blocks, head_channels=0) or fail
# with a bare 'division by zero'. Each is a count or a width: >= 1 (None: the model's default).
MODEL_COUNTS = ('stage_sizes', 'stage_planes', 'stage_widths', 'stem_width', 'stem_widths',
                'stem_channels', 'head_channels', 'hidden_width', 'groups', 'base_width',
                'reduce_first', 'pool_size', 'project_kernel')
MODEL_FRACTIONS = ('dropout_rate', 'drop_path_rate')   # [0, 1): 1 zeroes every activation
MODEL_SCALES = ('width', 'depth', 'scale')             # multipliers: > 0


def model_kwargs_section(v) -> SectionProblem:
  """config.model_kwargs: a mapping; counts and widths >= 1, rates in [0, 1), scales > 0
  (everything else is checked by building the model in validate.check_model_kwargs)."""
  if not hasattr(v, 'items'):
    return 'a mapping of keyword arguments'
  counts = integer(1)
  for key, value in v.items():
    if key in MODEL_COUNTS and value is not None:
      seq = value if isinstance(value, (tuple, list)) else (value,)
      if not seq or any(counts(x) for x in seq):
        return key, 'an integer >= 1 (a count or a width), or a sequence of them'
    problem = (FRACTION(value) if key in MODEL_FRACTIONS else
               number(0, lo_open=True)(value) if key in MODEL_SCALES and value is not None
               else None)
    if problem:
      return key, problem
  return None


def mesh_axis(v) -> str | None:
  return None if _is_int(v) and (v == -1 or v >= 1) else 'a positive integer, or -1 (the rest)'


def step_range(v) -> str | None:
  """() (off) or (start, end) with 0 <= start < end: config.profile_steps."""
  if isinstance(v, (tuple, list)) and (len(v) == 0 or (
      len(v) == 2 and all(_is_int(x) for x in v) and 0 <= v[0] < v[1])):
    return None
  return '() (off) or (start, end): two integer steps with 0 <= start < end'


POSITIVE_INT, NON_NEG = integer(1), number(0)
FRACTION = number(0, 1, hi_open=True)  # [0, 1)

FIELDS: dict[str, Checker] = {
    'seed': integer(0),
    'model': text(False),                       # registry membership checked in validate.py
    'model_kwargs': model_kwargs_section,       # and by building the model
    'dtype': choice('float32', 'bfloat16'),
    'dataset': text(False),                     # existence checked by opening it
    'data_dir': optional_text,
    'train_split': text(False),
    'eval_split': text(False),
    'num_classes': POSITIVE_INT,
    'image_size': integer(32),                  # the networks downsample by 32
    'eval_crop_fraction': crop_fraction,
    'interpolation': choice(*RESIZE_METHODS),
    'mean_rgb': numbers_of(3, number(0, 255)),
    'std_rgb': numbers_of(3, number(0, lo_open=True)),
    'crop_area_range': crop_range,
    'random_flip': boolean,
    'input_dtype': choice('float32', 'bfloat16'),
    'input_backend': choice('tfdata', 'grain'),  # grain's interpolations: grain_pipeline.py
    'augment': choice('none', 'autoaugment', 'randaugment'),
    'randaugment_num_layers': integer(0),
    'randaugment_magnitude': number(0, 30),
    'mixup_alpha': NON_NEG,
    'cutmix_alpha': NON_NEG,
    'batch_size': POSITIVE_INT,
    'eval_batch_size': POSITIVE_INT,
    'grad_accum_steps': POSITIVE_INT,
    'num_epochs': number(),
    'num_train_steps': integer(),
    'optimizer': text(False),                   # checked against optim.OPTIMIZERS
    'learning_rate': number(0, lo_open=True),
    'lr_schedule': text(False),                 # checked against optim.SCHEDULES
    'warmup_epochs': NON_NEG,
    'lr_decay_epochs': number(0, lo_open=True),
    'lr_decay_factor': number(0, 1, lo_open=True),
    'lr_step_epochs': numbers_of(None, NON_NEG, increasing=True),
    'momentum': FRACTION,
    'nesterov': boolean,
    'rmsprop_decay': FRACTION,
    'rmsprop_epsilon': number(0, lo_open=True),
    'weight_decay': NON_NEG,
    'weight_decay_exclude': regex,
    'label_smoothing': FRACTION,
    'grad_clip_norm': NON_NEG,
    'ema_decay': FRACTION,
    'ema_warmup': boolean,
    'log_every_steps': POSITIVE_INT,
    'eval_every_epochs': number(),              # <= 0: only at the end
    'checkpoint_every_steps': POSITIVE_INT,
    'keep_checkpoints': POSITIVE_INT,           # 0 could leave a run with no checkpoint
    'keep_best_checkpoint': boolean,
    'init_from': text(),                        # existence checked in validate.py
    'init_from_exclude': numbers_of(None, text(False)),
    'profile': boolean,
    'profile_steps': step_range,
    'peak_flops_per_device': NON_NEG,           # 0: the device table (training/mfu.py)
    'wandb_project': text(),                    # '': no W&B writer
    'conv_impl': text(False),                   # checked by building the model
    'compilation_cache_dir': text(),
    'allow_config_change': boolean,
    'evals': text(),                            # names checked by evaluation.build_evaluators
    'eval_definitions': mapping,
    'eval_tta': choice('none', 'flip'),
    'progressive': progressive_section,
    'distill': distill_section,
    'lars_trust_coefficient': number(0, lo_open=True),
    'lars_epsilon': NON_NEG,
    'lr_poly_power': number(0, lo_open=True),
    'mesh_data': mesh_axis,                     # divisibility checked in validate_mesh
    'mesh_fsdp': mesh_axis,
    'mesh_dcn_data': mesh_axis,                 # slices / processes checked in sharding.py
    'remat': choice('none', 'block', 'stage'),
    'remat_policy': choice('nothing', 'conv'),
    'memory_check': boolean,                    # training/memory.py
}


def _show(value) -> str:
  """repr of a config value on one line (a ConfigDict's own repr is multi-line YAML)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  text = repr(value)
  return text if len(text) <= 200 else text[:197] + '...'


def check_fields(config) -> str | None:
  """The first 'config.<field>=<value>: expected ...' error (for a section,
  'config.<section>.<key>=<value>: expected ...'), or None."""
  for field, checker in FIELDS.items():
    if field not in config:
      continue  # variant configs may drop a field; train.py's own reads then fail loudly
    value = config[field]
    problem = checker(value)
    if isinstance(problem, tuple):
      key, problem = problem
      field, value = f'{field}.{key}', value.get(key)
    if problem:
      return f'config.{field}={_show(value)}: expected {problem}'
  return None
