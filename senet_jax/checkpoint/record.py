"""The one record of a run or of converted weights: the model, its preprocessing, its classes.

One type and one JSON shape, with one name per fact (issue 32). It is written with every
checkpoint (the trainer's `meta` item, the converters', the hub cache's, NNX's) and as
`preprocessing.json` beside converted weights and exported artifacts; the tools, the hub loader
and export read it back through `Record.from_json` / `read_file`.

Readers also take the shapes written before this module existed (writers use only the new one):
- `crop_fraction` for `eval_crop_fraction` (the data pipeline's former field name);
- an exported `<artifact>.preprocessing.json` with the preprocessing keys at the top level;
- a trainer checkpoint whose model fields and class count are only inside its `config` JSON.

A leaf: imports nothing of senet_jax, so any floor may use it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

# Former names a reader still accepts -> the one name written now.
OLD_NAMES = {'crop_fraction': 'eval_crop_fraction'}


def _tuples(value):
  """JSON lists as tuples (model fields must be hashable), recursively."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _renamed(d: dict) -> dict:
  """`d` with the former key names replaced by the current ones (the current one wins)."""
  out = {OLD_NAMES.get(k, k): v for k, v in d.items() if k not in OLD_NAMES}
  for old, new in OLD_NAMES.items():
    if old in d:
      out.setdefault(new, d[old])
  return out


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The eval transform the weights expect: center crop of `eval_crop_fraction` of the shorter
  side (<= 0: the official res / (res + 32)), resize to `image_size` with `interpolation`, then
  `(pixels - mean_rgb) / std_rgb` on 0..255 values.

  `input_dtype` and `input_backend` ('grain' or 'tfdata') say how this host computes it; they
  are run-time choices, not facts of the weights, so they are neither stored (`STORED`) nor
  compared.
  """
  image_size: int
  eval_crop_fraction: float
  interpolation: str
  mean_rgb: tuple
  std_rgb: tuple
  input_dtype: str = dataclasses.field(default='float32', compare=False)
  input_backend: str = dataclasses.field(default='grain', compare=False)

  STORED: ClassVar[tuple[str, ...]] = ('image_size', 'eval_crop_fraction', 'interpolation',
                                       'mean_rgb', 'std_rgb')

  def __post_init__(self):
    # JSON gives lists; tuples keep the record hashable and comparable whatever its source.
    object.__setattr__(self, 'mean_rgb', tuple(float(v) for v in self.mean_rgb))
    object.__setattr__(self, 'std_rgb', tuple(float(v) for v in self.std_rgb))

  @property
  def crop_fraction(self) -> float:
    """Read-only former name of `eval_crop_fraction`, for the input pipelines that still use it
    (data/grain_pipeline.py, data/tfdata_pipeline.py); never stored."""
    return self.eval_crop_fraction

  @classmethod
  def from_config(cls, config) -> 'Preprocessing':
    """The training config's eval preprocessing (the config's field names are the record's)."""
    return cls(config.image_size, config.eval_crop_fraction, config.interpolation,
               tuple(config.mean_rgb), tuple(config.std_rgb), config.input_dtype,
               config.get('input_backend', 'grain'))

  @classmethod
  def from_json(cls, d: dict) -> 'Preprocessing':
    """From a stored dict (current or former key names)."""
    d = _renamed(d)
    return cls(int(d['image_size']), float(d['eval_crop_fraction']), str(d['interpolation']),
               tuple(d['mean_rgb']), tuple(d['std_rgb']))

  def to_json(self) -> dict:
    """The stored facts as JSON-ready values."""
    return {name: (list(getattr(self, name)) if name.endswith('_rgb') else getattr(self, name))
            for name in self.STORED}


@dataclasses.dataclass(frozen=True)
class Record:
  """What a checkpoint or an exported artifact says about its model.

  `model`: registered model name; `model_kwargs`: its fields beyond the defaults;
  `class_names`: one per class when known (empty: ImageNet lemmas for 1000 classes, else
  'class <i>'); `config`: the training config as JSON (training runs only); `step` and
  `input_next_step`: where a training run stands. `extra` keeps every other key a writer put in
  (provenance such as source / source_model / repo / revision, the integrity seal) unchanged.
  """
  model: str
  num_classes: int
  preprocessing: Preprocessing | None  # None: a bare meta that gave none (no tool can load it)
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  class_names: tuple = ()
  config: str = ''
  step: int | None = None
  input_next_step: int | None = None
  extra: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_config(cls, config) -> 'Record':
    """The record of a training run with `config` (a ConfigDict); the one mapping of config
    fields to record fields."""
    text = config.to_json_best_effort()
    plain = json.loads(text)
    return cls(plain['model'], int(plain['num_classes']), Preprocessing.from_config(config),
               _tuples(plain.get('model_kwargs') or {}), config=text)

  @classmethod
  def from_json(cls, d: dict) -> 'Record':
    """From a stored dict: current shape or any former one (see the module docstring)."""
    d = _renamed(dict(d))
    config = json.loads(d['config']) if isinstance(d.get('config'), str) else {}
    if 'preprocessing' in d:
      prep = Preprocessing.from_json(d.pop('preprocessing'))
    elif all(k in d for k in Preprocessing.STORED):  # a former export: facts at the top level
      prep = Preprocessing.from_json({k: d.pop(k) for k in Preprocessing.STORED})
    elif all(k in _renamed(config) for k in Preprocessing.STORED):  # a former trainer record
      prep = Preprocessing.from_json(_renamed(config))
    else:  # weights saved with a bare meta (save_converted's callers may give only the model)
      prep = None
    # Former trainer records keep the model's fields and class count inside the config only.
    fields = {'model': d.pop('model', config.get('model', '')),
              'num_classes': int(d.pop('num_classes', config.get('num_classes', 0))),
              'model_kwargs': _tuples(d.pop('model_kwargs', config.get('model_kwargs', {}))),
              'class_names': tuple(d.pop('class_names', ())), 'config': d.pop('config', ''),
              'step': d.pop('step', None), 'input_next_step': d.pop('input_next_step', None)}
    return cls(preprocessing=prep, extra=d, **fields)

  def to_json(self) -> dict:
    """The JSON dict every writer stores (empty / unset fields left out)."""
    out = {'model': self.model, 'model_kwargs': json.loads(json.dumps(self.model_kwargs)),
           'num_classes': self.num_classes}
    if self.preprocessing is not None:
      out['preprocessing'] = self.preprocessing.to_json()
    optional = {'class_names': list(self.class_names), 'config': self.config,
                'step': self.step, 'input_next_step': self.input_next_step}
    out.update({k: v for k, v in optional.items() if v not in ((), [], '', None)})
    clash = sorted(set(self.extra) & set(out))
    if clash:
      raise ValueError(f'record: extra keys {clash} repeat record fields')
    return {**out, **self.extra}

  def config_dict(self) -> dict:
    """The training config (lists as tuples), or {} for converted weights."""
    return _tuples(json.loads(self.config)) if self.config else {}


def read_file(path: str) -> Record:
  """The record in a JSON file (`preprocessing.json` of converted weights or an export)."""
  with open(path) as f:
    return Record.from_json(json.load(f))


def write_file(path: str, record: Record) -> None:
  """Writes `record` as JSON at `path` (what `read_file` reads)."""
  with open(path, 'w') as f:
    json.dump(record.to_json(), f, indent=1)


def normalized(meta: dict | Record) -> dict:
  """A writer's record, as a dict in the current shape (former names mapped)."""
  return (meta if isinstance(meta, Record) else Record.from_json(meta)).to_json()
