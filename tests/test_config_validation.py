"""Every config field validated before compute, config changes on resume, the workdir lock."""
import json
import logging
import os
import socket
import subprocess
import time

import pytest

from configs import default
import train
from senet_jax.training import config_diff, config_fields, validate, workdir_lock
from test_fault_tolerance import ROOT, main_cmd
from test_train import tiny_config

# Bad values for every field of configs/default.py (wrong type, out of range, unknown name).
BAD_VALUES = {
    'seed': [-1, 1.5, 'a'],
    'model': ['', 3],
    'model_kwargs': [3, 'se_reduction=0', {'stage_sizes': (0, 0, 0, 0)}, {'stem_width': 0},
                     {'stage_planes': (8, -1)}, {'head_channels': 0}, {'dropout_rate': 1.0},
                     {'width': 0.0}],
    'dtype': ['float16', 'fp32'],
    'dataset': ['', None],
    'data_dir': [3],
    'train_split': ['', 7],
    'eval_split': ['', None],
    'num_classes': [0, -3, 2.5],
    'image_size': [2, 0, 224.0],  # 16: the model's own minimum (test_fault_tolerance)
    'eval_crop_fraction': [0.0, 1.5, -0.5],
    'interpolation': ['foo', 'cubic'],
    'mean_rgb': [(1, 2), (1, 2, 300), 'abc'],
    'std_rgb': [(1, 0, 1), (1, 2, -1), (1, 2)],
    'crop_area_range': [(0.5, 0.2), (0.0, 1.0), (0.1, 1.5), (0.1,)],
    'random_flip': ['yes', 1],
    'input_dtype': ['float16', 'int8'],
    'augment': ['autoaug', 'mixup'],
    'randaugment_num_layers': [-1, 1.5],
    'randaugment_magnitude': [-1, 31],
    'mixup_alpha': [-1.0, float('nan')],
    'cutmix_alpha': [-0.5],
    'batch_size': [0, -32, 32.5],
    'eval_batch_size': [0, -1],
    'grad_accum_steps': [0, 1.5],
    'num_epochs': ['ten', None, float('inf'), float('nan')],
    'num_train_steps': [1.5, 'x'],
    'optimizer': ['', 4],
    'learning_rate': [0.0, -0.1, float('nan'), float('inf')],
    'lr_schedule': ['', None],
    'warmup_epochs': [-1.0],
    'lr_decay_epochs': [0.0, -2.4],
    'lr_decay_factor': [0.0, 1.5, -0.97],
    'lr_step_epochs': [(60, 30), (-1,), 30],
    'momentum': [1.0, -0.1],
    'nesterov': ['true'],
    'rmsprop_decay': [1.0, -0.5],
    'rmsprop_epsilon': [0.0, -1e-3],
    'weight_decay': [-1e-4, float('inf')],
    'weight_decay_exclude': ['(unclosed', 3],
    'label_smoothing': [1.0, -0.1],
    'grad_clip_norm': [-1.0],
    'ema_decay': [1.0, -0.5],
    'ema_warmup': ['x'],
    'log_every_steps': [0, -1],
    'eval_every_epochs': ['often', float('inf'), float('nan')],
    'checkpoint_every_steps': [0, -10],
    'keep_checkpoints': [0, -1],
    'keep_best_checkpoint': ['yes'],
    'init_from': [3],
    'init_from_exclude': ['fc', ('fc', '')],
    'profile': [2],
    'profile_steps': [(5,), (10, 5), (-1, 3), 'x', (1.5, 3)],
    'peak_flops_per_device': [-1.0, float('inf'), 'tpu'],
    'wandb_project': [3, None],
    'conv_impl': ['', 3],
    'compilation_cache_dir': [None, 0],
    'allow_config_change': ['yes'],
    'evals': [3, None],
    'eval_definitions': [3, 'real'],
    'eval_tta': ['mirror', True],
    'progressive': [3, {'num_stages': -1}, {'num_stages': 4, 'image_size': (16, 300)},
                    {'num_stages': 4, 'dropout_rate': (0.1, 1.0)},
                    {'num_stages': 4, 'mixup_alpha': (0.0,)},
                    {'num_stages': 4, 'mixup_alpha': (0.0, float('inf'))}],
    'distill': ['teacher', {'teacher': '/ckpt', 'model': ''},
                {'teacher': '', 'temperature': 0.0}, {'teacher': '', 'alpha': 1.5},
                {'teacher': '', 'temperature': float('inf')}],
    'lars_trust_coefficient': [0.0, -1e-3],
    'lars_epsilon': [-1.0],
    'lr_poly_power': [0.0, 'two'],
    'mesh_data': [-2, 0, 1.5],
    'mesh_fsdp': [-3, 'all'],
    'mesh_dcn_data': [0, -2, 1.5],
    'remat': ['stages', True],
    'remat_policy': ['everything'],
    'memory_check': ['yes', 1],
    'input_backend': ['tf.data', 'torch'],
}


def test_every_default_field_has_a_validation_rule_and_bad_values_here():
  fields = set(default.get_config().keys())
  assert fields - set(config_fields.FIELDS) == set(), 'add a checker to config_fields.FIELDS'
  assert fields - set(BAD_VALUES) == set(), 'add bad values to BAD_VALUES in this test'


def _names_read(path: str) -> set[str]:
  """Attribute names (`config.x`) and literal keys (`config['x']`, `config.get('x')`) in a file."""
  import ast
  with open(path) as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      names.add(node.attr)
    elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
      names.add(node.slice.value)
    elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'get' and node.args
          and isinstance(node.args[0], ast.Constant)):
      names.add(node.args[0].value)
  return names


def test_every_default_field_is_read_by_the_code():
  # A documented field that nothing reads misleads (shuffle_buffer, cache_train were removed).
  # config/schema.py, the rules table, checks every field without using it.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rules = os.path.join(root, 'senet_jax', 'config', 'schema.py')
  paths = [os.path.join(root, 'train.py')] + [
      os.path.join(d, n) for d, _, files in os.walk(os.path.join(root, 'senet_jax'))
      for n in files if n.endswith('.py') and os.path.join(d, n) != rules]
  read = set().union(*(_names_read(p) for p in paths))
  config = default.get_config()
  fields = set(config.keys()) | {f'{group}.{key}' for group in ('progressive', 'distill')
                                 for key in config[group].keys()}
  unread = sorted(f for f in fields if f.split('.')[-1] not in read)
  assert unread == [], f'fields nothing reads: {unread}'


@pytest.mark.parametrize('field,value', [(f, v) for f, vs in BAD_VALUES.items() for v in vs],
                         ids=lambda x: repr(x)[:20])
def test_bad_value_of_every_field_is_named(field, value):
  config = default.get_config().to_dict()  # plain dict: no type coercion of the bad value
  config[field] = value
  problem = config_fields.check_fields(config)
  assert problem is not None, problem
  assert problem.startswith((f'config.{field}=', f'config.{field}.')), problem  # a section's key
  assert 'expected' in problem and '\n' not in problem


@pytest.mark.parametrize('key,value,message', [
    ('distill.temperature', 0.0, 'config.distill.temperature=0.0: expected a finite number > 0'),
    ('progressive.image_size', (16, 300), 'config.progressive.image_size=(16, 300): expected'),
    ('model_kwargs.stage_sizes', (0, 0, 0, 0),
     'config.model_kwargs.stage_sizes=(0, 0, 0, 0): expected an integer >= 1'),
])
def test_a_section_error_names_its_key_on_one_line(key, value, message):
  # Issue 31: a bad distill.temperature printed the whole ConfigDict (YAML, 10 lines).
  from configs import quickstart
  config = quickstart.get_config()
  section, name = key.split('.')
  config[section][name] = value
  problem = config_fields.check_fields(config)
  assert problem.startswith(message) and '\n' not in problem, problem


def test_defaults_and_every_config_file_pass():
  assert config_fields.check_fields(default.get_config()) is None
  from test_configs import CONFIG_FILES, load_config
  for path in CONFIG_FILES:
    assert config_fields.check_fields(load_config(path)) is None, path


@pytest.mark.parametrize('overrides,message', [
    (dict(checkpoint_every_steps=0), 'config.checkpoint_every_steps=0'),
    (dict(log_every_steps=0), 'config.log_every_steps=0'),
    (dict(keep_checkpoints=0, keep_best_checkpoint=False), 'config.keep_checkpoints=0'),
    (dict(mixup_alpha=-1.0), 'config.mixup_alpha=-1.0'),
    (dict(interpolation='foo'), "config.interpolation='foo'"),
    (dict(model='seresnet18'), "did you mean 'se_resnet18'"),   # timm-style alias
    (dict(optimizer='adamw_'), "did you mean 'adamw'"),
    (dict(model_kwargs=dict(se_reduction=0.0)), 'config.model_kwargs.*se_reduction'),
    (dict(model_kwargs=dict(se_gate='foo')), 'config.model_kwargs.*foo'),
    (dict(model_kwargs=dict(se_stages=(9,))), 'config.model_kwargs'),
    (dict(eval_split='valid'), r"split 'valid'.*config.eval_split"),
    (dict(dataset='senet_digit'), "not a TFDS dataset; did you mean 'senet_digits'"),
    (dict(init_from='/no/such/dir'), 'config.init_from'),
    # Checked against the opened dataset (1438 train / 359 test digits, 10 classes):
    (dict(num_classes=3), r'^config\.num_classes=3 is smaller than the 10 classes'),
    (dict(batch_size=4096), r'^config\.batch_size=4096 is larger than the train split .*1438'),
    (dict(num_epochs=1.0, num_train_steps=40),  # 1438 // 32 = 44 steps per epoch
     r'^config\.num_train_steps=40 and config\.num_epochs=1\.0 \(= 44 steps'),
    (dict(eval_every_epochs=0.01), r'^config\.eval_every_epochs=0\.01 is 0\.44 steps'),
    (dict(eval_split='test[:0]'), r"^config\.eval_split='test\[:0\]' selects no examples"),
    (dict(train_split='train[:0]'), r"^config\.train_split='train\[:0\]' selects no examples"),
    (dict(distill=dict(teacher='/ckpt', model='se_resnet51')),
     r"^config\.distill\.model='se_resnet51' is not a registered model"),
])
def test_validate_config_names_the_field(digits_dir, tmp_path, overrides, message):
  config = tiny_config(digits_dir)
  kwargs = overrides.pop('model_kwargs', None)
  config.update(overrides)
  if kwargs:
    config.model_kwargs.update(kwargs)
  with pytest.raises(validate.ConfigError, match=message):
    validate.validate_config(config, str(tmp_path / 'w'), 1, 1)


def test_length_is_steps_or_epochs_and_both_must_agree(digits_dir, tmp_path):
  # 1438 train digits // batch 32 = 44 steps per epoch (hand-computed).
  for epochs, steps, expected in ((1.0, -1, 44), (1.5, -1, 66), (0.0, 40, 40), (1.0, 44, 44)):
    config = tiny_config(digits_dir, num_epochs=epochs, num_train_steps=steps)
    assert train.training_length(config, 1438) == (44, expected)
    validate.validate_config(config, str(tmp_path / 'w'), 1, 1)  # agreeing values pass
  with pytest.raises(validate.ConfigError, match='config.num_epochs=0 to train by steps'):
    validate.validate_config(tiny_config(digits_dir, num_epochs=1.0, num_train_steps=45),
                             str(tmp_path / 'w'), 1, 1)


@pytest.mark.parametrize('flags,field', [
    (['--config.eval_every_epochs=0.01'], 'config.eval_every_epochs'),  # was ZeroDivisionError
    (['--config.num_epochs=1', '--config.num_train_steps=40'],         # trained 44 steps
     'config.num_train_steps'),
    (['--config.distill.temperature=0'], 'config.distill.temperature'),  # dumped the section
])
def test_cli_bad_value_exits_2_in_one_line_before_the_model_is_built(digits_dir, tmp_path,
                                                                     flags, field):
  run = subprocess.run(main_cmd(str(tmp_path / 'run'), digits_dir, *flags), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(f'error: bad config: {field}='), errors
  assert run.stderr.rstrip().splitlines()[-1] == errors[0]  # nothing of a section after it
  assert 'Traceback' not in run.stderr
  # Before the state is created (its log line) and before any compilation.
  assert ' parameters' not in run.stderr and 'compiling the' not in run.stderr


def test_unusable_workdir_is_a_config_error(digits_dir):
  with pytest.raises(validate.ConfigError, match=r"--workdir='/proc/x/y' cannot be created"):
    validate.validate_config(tiny_config(digits_dir), '/proc/x/y', 1, 1)


# ---- Config changes on resume -------------------------------------------------------------

def test_trajectory_change_is_an_error_and_harmless_change_a_note(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  saved = default.get_config()
  config = default.get_config()
  config.log_every_steps, config.eval_every_epochs = 7, 2.0
  config_diff.check_resume_config(saved.to_json_best_effort(), config, str(tmp_path), 5, True)
  assert 'log_every_steps: 100 -> 7' in caplog.text  # noted, not an error
  for field, value in (('batch_size', 128), ('learning_rate', 0.05), ('dtype', 'bfloat16'),
                       ('model', 'se_resnet101'), ('num_epochs', 90.0),
                       ('input_backend', 'tfdata')):  # other random draws (issue 33)
    changed = default.get_config()
    changed[field] = value
    with pytest.raises(config_diff.ConfigChangedError, match=f'{field}: .* -> {value!r}'):
      config_diff.check_resume_config(saved.to_json_best_effort(), changed, str(tmp_path), 5,
                                      True)
  assert not os.path.exists(tmp_path / 'config_changes.json')


def test_allowed_config_change_is_recorded(tmp_path):
  saved = default.get_config().to_json_best_effort()
  config = default.get_config()
  config.batch_size, config.allow_config_change = 512, True
  config_diff.check_resume_config(saved, config, str(tmp_path), 40, record=True)
  with open(tmp_path / 'config_changes.json') as f:
    history = json.load(f)
  assert history[0]['step'] == 40
  assert history[0]['changes'] == {'batch_size': {'saved': 256, 'new': 512}}


def test_nested_model_kwargs_change_is_detected(tmp_path):
  from configs import quickstart
  saved = quickstart.get_config().to_json_best_effort()
  config = quickstart.get_config()
  config.model_kwargs.se_reduction = 4.0
  with pytest.raises(config_diff.ConfigChangedError, match='model_kwargs.se_reduction'):
    config_diff.check_resume_config(saved, config, str(tmp_path), 1, True)


def test_checkpoint_saved_with_removed_fields_still_resumes(tmp_path):
  # shuffle_buffer and cache_train were removed (nothing read them); older checkpoints list them.
  saved = json.loads(default.get_config().to_json_best_effort())
  saved.update(shuffle_buffer=16_384, cache_train=False)
  config_diff.check_resume_config(json.dumps(saved), default.get_config(), str(tmp_path), 3, True)
  saved['batch_size'] = 512  # a real change next to them is still an error, naming only it
  with pytest.raises(config_diff.ConfigChangedError,
                     match=r'config: batch_size: 512 -> 256\. Rerun'):
    config_diff.check_resume_config(json.dumps(saved), default.get_config(), str(tmp_path), 3,
                                    True)


# ---- Workdir lock -------------------------------------------------------------------------

def _write_lock(workdir, **info):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with open(path, 'w') as f:
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time(),
               'command': 'main.py --other-run', **info}, f)
  return path


def test_lock_is_exclusive_names_the_other_run_and_is_released(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f'pid {os.getpid()} on host'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not os.path.exists(first.path)
  with workdir_lock.WorkdirLock(str(tmp_path)):  # free again
    pass


def test_stale_locks_are_taken_over(tmp_path):
  dead = _write_lock(str(tmp_path / 'a'), pid=2 ** 22 + 12345)  # no such process here
  with workdir_lock.WorkdirLock(str(tmp_path / 'a')) as lock:
    assert json.load(open(dead))['pid'] == os.getpid() == lock.info['pid']
  old = _write_lock(str(tmp_path / 'b'), host='another-host')
  os.utime(old, (time.time() - 3600, time.time() - 3600))  # no heartbeat for an hour
  with workdir_lock.WorkdirLock(str(tmp_path / 'b'), stale_after_s=300):
    pass
  _write_lock(str(tmp_path / 'c'), host='another-host')  # fresh heartbeat: in use
  with pytest.raises(workdir_lock.WorkdirLockedError, match='host another-host'):
    workdir_lock.WorkdirLock(str(tmp_path / 'c')).acquire()


def test_heartbeat_refreshes_the_lock(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  os.utime(lock.path, (0, 0))
  time.sleep(0.3)
  assert time.time() - os.path.getmtime(lock.path) < 5
  lock.release()
