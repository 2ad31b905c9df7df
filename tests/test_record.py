"""The run record (senet_jax/checkpoint/record.py): one type, one name per preprocessing fact,
written by every writer in one shape, and the files written before it still read (issue 32)."""
import ast
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from senet_jax import evaluation, loading
from senet_jax.checkpoint import record
from senet_jax.convert import core, hub
from senet_jax.data import image_ops, preprocess
from senet_jax.export import serving
from senet_jax.export.__main__ import exported_record
from senet_jax.models import create_model
from senet_jax.training.checkpoint import Checkpointer, open_newest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'senet_jax')
TINY = dict(stage_sizes=(1, 1, 1, 1), stage_planes=(8, 8, 8, 8), stem_width=8, layout='v1.5')
# Names a fact has had, or could plausibly be given, in this project and its sources (timm's
# pretrained_cfg, Keras): at most one name of each group may be stored or be a record field.
SYNONYMS = [
    {'eval_crop_fraction', 'crop_fraction', 'crop_pct', 'crop'},
    {'image_size', 'input_size', 'img_size', 'resolution'},
    {'interpolation', 'resize_method', 'method'},
    {'mean_rgb', 'mean'},
    {'std_rgb', 'std'},
    {'model_kwargs', 'kwargs', 'overrides'},
    {'class_names', 'labels'},
    {'num_classes', 'classes'},
]
# The facts of a hand-written record, in their current names.
FACTS = {'image_size': 40, 'eval_crop_fraction': 0.75, 'interpolation': 'bilinear',
         'mean_rgb': [10.0, 20.0, 30.0], 'std_rgb': [2.0, 3.0, 4.0]}


def keys(value) -> set[str]:
  """Every dict key in a JSON value, at any depth."""
  if isinstance(value, dict):
    return set(value) | set().union(*(keys(v) for v in value.values()))
  if isinstance(value, list):
    return set().union(set(), *(keys(v) for v in value))
  return set()


def assert_one_name_per_fact(names: set[str], where: str):
  for group in SYNONYMS:
    assert len(group & names) <= 1, f'{where}: one fact under {sorted(group & names)}'


def stored_meta(directory: str) -> dict:
  """The raw JSON of the newest checkpoint's meta item (as written, no reader in between)."""
  _, manager, step = open_newest(directory)
  import orbax.checkpoint as ocp
  return dict(manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta'])


def tiny_variables():
  model = create_model('se_resnet18', num_classes=3, **TINY)
  return jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def test_one_preprocessing_type():
  # The data pipelines, the evaluators, the converters and the tools all use the record's type.
  for other in (image_ops.Preprocessing, preprocess.Preprocessing, core.Preprocessing,
                evaluation.Preprocessing):
    assert other is record.Preprocessing
  assert issubclass(loading.Loaded, record.Preprocessing)
  assert issubclass(serving.Servable, loading.Loaded)


def test_no_fact_has_two_names_in_the_types_or_what_the_writers_store(tmp_path):
  fields = set()
  for cls in (record.Preprocessing, record.Record, loading.Loaded, serving.Servable):
    fields |= {f.name for f in dataclasses.fields(cls)}
  assert_one_name_per_fact(fields, 'dataclass fields')
  config = default.get_config()
  trainer = record.Record.from_config(config).to_json()  # what the trainer's save stores
  assert_one_name_per_fact(keys(trainer), 'trainer record')
  # The converters, the hub cache and NNX hand save_converted a dict (maybe a former one).
  core.save_converted(str(tmp_path / 'conv'), tiny_variables(), {
      'model': 'se_resnet18', 'model_kwargs': TINY, 'num_classes': 3, 'source': 'nnx',
      'preprocessing': {**{k: v for k, v in FACTS.items() if k != 'eval_crop_fraction'},
                        'crop_fraction': 0.75}})
  converted = stored_meta(str(tmp_path / 'conv'))
  assert_one_name_per_fact(keys(converted), 'converted checkpoint')
  assert converted['preprocessing']['eval_crop_fraction'] == 0.75
  exported = exported_record(serving.load(str(tmp_path / 'conv')), 'stablehlo').to_json()
  assert_one_name_per_fact(keys(exported), 'exported record')
  assert set(trainer['preprocessing']) == set(converted['preprocessing']) == set(
      exported['preprocessing']) == set(FACTS)


def test_no_module_spells_a_stored_fact_by_a_former_name():
  # A dict key or subscript 'crop_fraction' would store or read the crop under its old name;
  # only the record's table of former names may spell it.
  offenders = []
  for directory, _, names in os.walk(PACKAGE):
    for name in names:
      path = os.path.join(directory, name)
      if not name.endswith('.py') or path.endswith(os.path.join('checkpoint', 'record.py')):
        continue
      for node in ast.walk(ast.parse(open(path).read())):
        spelled = (node.keys if isinstance(node, ast.Dict) else
                   [node.slice] if isinstance(node, ast.Subscript) else [])
        offenders += [f'{path}:{node.lineno}' for k in spelled
                      if isinstance(k, ast.Constant) and k.value in record.OLD_NAMES]
  assert not offenders


def test_the_trainer_record_maps_the_config_once():
  config = default.get_config()
  config.eval_crop_fraction, config.image_size, config.num_classes = 0.8, 96, 7
  config.model_kwargs = {'se_reduction': 8, 'stage_sizes': (1, 2)}
  run = record.Record.from_config(config)
  assert (run.preprocessing.eval_crop_fraction, run.preprocessing.image_size) == (0.8, 96)
  assert (run.model, run.num_classes) == (config.model, 7)
  assert run.model_kwargs == {'se_reduction': 8, 'stage_sizes': (1, 2)}
  stored = json.loads(json.dumps(run.to_json()))
  assert record.Record.from_json(stored) == run  # what is written reads back the same


def test_a_former_export_file_reads_and_is_rewritten_in_the_current_shape(tmp_path):
  # <artifact>.preprocessing.json as export wrote it before the record: facts at the top level.
  path = str(tmp_path / 'model.tflite.preprocessing.json')
  with open(path, 'w') as f:
    json.dump({'format': 'tflite', 'model': 'se_resnet18', 'input': 'uint8 NHWC', **FACTS}, f)
  run = record.read_file(path)
  assert run.model == 'se_resnet18'
  assert run.preprocessing == record.Preprocessing(40, 0.75, 'bilinear', (10., 20., 30.),
                                                   (2., 3., 4.))
  assert run.extra == {'format': 'tflite', 'input': 'uint8 NHWC'}
  record.write_file(path, run)
  with open(path) as f:
    written = json.load(f)
  assert written['preprocessing'] == FACTS and not set(FACTS) & set(written)


def test_a_former_name_reads_and_only_the_current_one_is_written(tmp_path):
  # A hub cache's preprocessing.json with the data pipeline's former name for the crop.
  old = {'source': 'hub', 'repo': 'timm/x', 'revision': 'abc', 'source_model': 'x',
         'model': 'se_resnet18', 'model_kwargs': {'layout': 'v1.5'}, 'num_classes': 3,
         'preprocessing': {**FACTS, 'crop_fraction': 0.75}}
  del old['preprocessing']['eval_crop_fraction']
  with open(tmp_path / hub.META_FILE, 'w') as f:
    json.dump(old, f)
  meta = hub.read_meta(str(tmp_path))
  assert meta['preprocessing'] == FACTS
  assert (meta['repo'], meta['model_kwargs']) == ('timm/x', {'layout': 'v1.5'})


def test_a_former_trainer_checkpoint_loads(tmp_path):
  # The trainer's record before this module: model fields and classes only inside the config.
  config = {'model': 'se_resnet18', 'model_kwargs': TINY, 'num_classes': 3,
            'conv_impl': 'xla', 'dataset': 'senet_digits', **FACTS}
  old_meta = {'model': 'se_resnet18', 'config': json.dumps(config),
              'preprocessing': dict(FACTS), 'step': 5, 'input_next_step': 5}
  variables = tiny_variables()
  state = {'step': np.asarray(5, np.int32), 'params': variables['params'],
           'batch_stats': variables['batch_stats']}
  ckpt = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), keep=1, keep_best=False,
                      async_save=False)
  ckpt.save(5, state, old_meta, force=True)
  ckpt.close()
  loaded = loading.load(str(tmp_path / 'run'))
  assert loaded.preprocessing == record.Preprocessing(40, 0.75, 'bilinear', (10., 20., 30.),
                                                      (2., 3., 4.))
  assert (loaded.name, loaded.num_classes, loaded.model.stem_width) == ('se_resnet18', 3, 8)
  assert loaded.config['dataset'] == 'senet_digits' and loaded.record.step == 5
  assert loaded.class_names == ['class 0', 'class 1', 'class 2']
  x = np.zeros((1, 32, 32, 3), np.float32)
  np.testing.assert_array_equal(loaded.model.apply(loaded.variables, x, train=False),
                                create_model('se_resnet18', num_classes=3, **TINY).apply(
                                    variables, x, train=False))


def test_a_bare_meta_has_no_preprocessing_and_writes_none():
  # save_converted's callers may give only the model name (tests/test_first_contact.py): the
  # record then holds no preprocessing rather than inventing one.
  from senet_jax.checkpoint.record import Record
  record = Record.from_json({'model': 'se_resnet18'})
  assert record.preprocessing is None and record.model == 'se_resnet18'
  assert record.to_json() == {'model': 'se_resnet18', 'model_kwargs': {}, 'num_classes': 0}
