"""One schema entry per config field (senet_jax/config/schema.py), from which the defaults,
the field checks, the sections' checks and the resume diff are derived; no rule stated twice."""
import ast
import builtins
import json
import os
import textwrap

import pytest

from configs import default
from senet_jax.config import diff, schema
from senet_jax.errors import ConfigError
from senet_jax.training import distill, progressive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELD_NAMES = set(schema.FIELDS) | {k.name for f in schema.SCHEMA for k in f.fields}


def test_a_field_declared_twice_is_refused():
  seed = schema.Field('seed', 0, schema.integer(0), 'seed')
  with pytest.raises(ValueError, match=r"declared twice in the schema: \['seed'\]"):
    schema._unique((seed, seed))
  with pytest.raises(ValueError, match=r"declared twice in the schema: \['alpha'\]"):
    schema.section('distill', 'doc', schema.DISTILL + schema.DISTILL[-1:], 'a mapping')


def test_the_defaults_are_the_schemas_and_default_py_repeats_none():
  assert default.get_config().to_dict() == schema.default_config().to_dict()
  # configs/default.py assigns no field itself: each default is written once, in the schema.
  tree = ast.parse(open(os.path.join(ROOT, 'configs', 'default.py')).read())
  assigned = [ast.unparse(t) for n in ast.walk(tree) if isinstance(n, ast.Assign)
              for t in n.targets]
  assert assigned == []


# ---- No rule stated twice ------------------------------------------------------------------

def _single_field_rules(source: str) -> list[str]:
  """The tests of `if ...: raise ConfigError(...)` that compare one config field (an attribute
  or a constant key named like a schema field) with constants only: a field's own rule, which
  belongs in the schema. Rules that also involve a local value (devices, data, the built model,
  a registry, another field) are cross-field rules and are not listed."""
  tree = ast.parse(source)
  modules = {(a.asname or a.name).split('.')[0] for n in ast.walk(tree)
             if isinstance(n, ast.Import) for a in n.names}
  found = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.If):
      continue
    raises = [s for s in node.body if isinstance(s, ast.Raise)]
    if not (raises and 'ConfigError' in ast.dump(raises[0])
            and any(isinstance(c, ast.Compare) for c in ast.walk(node.test))):
      continue
    bound = {t.id for c in ast.walk(node.test) if isinstance(c, ast.comprehension)
             for t in ast.walk(c.target) if isinstance(t, ast.Name)}
    fields, runtime = set(), [False]

    def visit(n):
      if isinstance(n, ast.Attribute) and n.attr in FIELD_NAMES:
        fields.add(n.attr)
      elif (isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
            and n.slice.value in FIELD_NAMES):
        fields.add(n.slice.value)
      elif isinstance(n, ast.Name):  # constants, builtins, modules and comprehension names only
        runtime[0] |= not (n.id.isupper() or hasattr(builtins, n.id) or n.id in bound
                           or n.id in modules)
      else:
        for child in ast.iter_child_nodes(n):
          visit(child)
    visit(node.test)
    if len(fields) == 1 and not runtime[0]:
      found.append(ast.unparse(node.test))
  return found


def test_the_rule_finder_sees_a_restated_rule_and_passes_cross_field_rules():
  source = textwrap.dedent('''
      import math
      from senet_jax.models import list_models
      def check(config, distill, device_count, min_size):
        if config.dtype not in ('float32', 'bfloat16'):
          raise ConfigError('dtype')
        if not (math.isfinite(distill.temperature) and distill.temperature > 0):
          raise ConfigError('temperature')
        if not all(0.0 <= r < 1.0 for r in config.progressive.dropout_rate):
          raise ConfigError('dropout')
        if config.image_size < MIN_RESOLUTION:
          raise ConfigError('image_size')
        if config.batch_size % device_count:                      # the devices
          raise ConfigError('batch')
        if config.num_epochs <= 0 and config.num_train_steps <= 0:  # two fields
          raise ConfigError('length')
        if config.model not in list_models():                     # a registry
          raise ConfigError('model')
        if min(config.progressive.image_size) < min_size:         # the built model
          raise ConfigError('size')
      ''')
  assert _single_field_rules(source) == [
      "config.dtype not in ('float32', 'bfloat16')",
      'not (math.isfinite(distill.temperature) and distill.temperature > 0)',
      'not all((0.0 <= r < 1.0 for r in config.progressive.dropout_rate))',
      'config.image_size < MIN_RESOLUTION']


def _package_files():
  for directory, _, names in os.walk(os.path.join(ROOT, 'senet_jax')):
    for name in sorted(names):
      if name.endswith('.py'):
        yield os.path.join(directory, name)


def test_no_field_rule_is_restated_outside_the_schema():
  restated = {os.path.relpath(path, ROOT): rules for path in _package_files()
              if (rules := _single_field_rules(open(path).read()))}
  assert restated == {}, 'state the rule once, in senet_jax/config/schema.py'


def _validation_code() -> dict[str, str]:
  """{name: source} of the code that checks configs outside the schema: config/ (but the
  schema and its checkers) and the sections' check_config functions."""
  config_dir = os.path.join(ROOT, 'senet_jax', 'config')
  sources = {name: open(os.path.join(config_dir, name)).read()
             for name in os.listdir(config_dir)
             if name.endswith('.py') and name not in ('schema.py', 'checks.py')}
  for module in (distill, progressive):
    tree = ast.parse(open(module.__file__).read())
    sources[module.__name__] = next(ast.unparse(n) for n in tree.body
                                    if isinstance(n, ast.FunctionDef) and n.name == 'check_config')
  return sources


def test_no_choice_list_is_restated_in_the_validation_code():
  fields = list(schema.SCHEMA) + [k for f in schema.SCHEMA for k in f.fields]
  choices = {frozenset(f.check.allowed) for f in fields if hasattr(f.check, 'allowed')}
  assert frozenset({'none', 'autoaugment', 'randaugment'}) in choices  # the finder's premise
  restated = [(name, ast.unparse(n)) for name, source in _validation_code().items()
              for n in ast.walk(ast.parse(source))
              if isinstance(n, (ast.Tuple, ast.List, ast.Set)) and len(n.elts) > 1
              and all(isinstance(e, ast.Constant) for e in n.elts)
              and frozenset(e.value for e in n.elts) in choices]
  assert restated == []


# ---- The sections use the same rules ------------------------------------------------------

@pytest.mark.parametrize('section,key,value', [
    ('distill', 'temperature', 0.0), ('distill', 'alpha', 1.5),
    ('progressive', 'dropout_rate', (0.1, 1.0)), ('progressive', 'mixup_alpha', (0.0,)),
])
def test_a_section_check_gives_the_schemas_message(section, key, value):
  config = default.get_config()
  config[section][key] = value
  config.distill.teacher, config.distill.model = '/ckpt', 'se_resnet18'
  message = schema.check_fields(config)
  assert message.startswith(f'config.{section}.{key}=') and 'expected' in message, message
  with pytest.raises(ConfigError) as raised:
    if section == 'distill':
      distill.check_config(config.distill)
    else:
      progressive.check_config(config.progressive, 'randaugment', 32)
  assert str(raised.value) == message


# ---- The resume diff follows each field's `harmless` --------------------------------------

@pytest.mark.parametrize('name', sorted(schema.FIELDS))
def test_a_change_on_resume_is_an_error_unless_the_field_is_harmless(name, tmp_path):
  saved = json.loads(default.get_config().to_json_best_effort())
  saved[name] = '<another value>'
  check = lambda: diff.check_resume_config(json.dumps(saved), default.get_config(),  # noqa
                                           str(tmp_path), 1, record=False)
  if schema.FIELDS[name].harmless:
    check()
  else:
    with pytest.raises(diff.ConfigChangedError, match=f'{name}: '):
      check()


def test_every_field_has_a_doc_and_is_listed(capsys):
  from senet_jax.config import __main__ as listing
  listing.main()
  printed = capsys.readouterr().out
  for field in list(schema.SCHEMA) + [k for f in schema.SCHEMA for k in f.fields]:
    assert field.doc and '\n' not in field.doc, field.name
    assert f'{field.name}' in printed
