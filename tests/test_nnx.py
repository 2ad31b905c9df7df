"""The Flax NNX front end (`senet_jax.nnx`): same logits and statistics as the Linen model with
the same variables, NNX train/eval conventions, feature backbones, the NNX fine-tuning example,
and the round trip through senet_jax checkpoints (the converters' writer, `load_params`)."""
import importlib.util
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_EFFICIENTNET, TINY_RESNET
from senet_jax import loading
from senet_jax import nnx as senet_nnx
from senet_jax.convert import core
from senet_jax.models import create_model
from senet_jax.training.checkpoint import CheckpointMismatchError, load_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MOBILENETV3 = dict(stages=(('ds_r1_k3_s2_e1_c8_se0.25_nre',), ('ir_r1_k3_s2_e4.5_c16_nre',),
                                ('ir_r1_k5_s1_e4_c16_se0.25',)), head_channels=16)
FAMILIES = {  # one model of each family, tiny; dropout (and stochastic depth) left on
    'se_resnet18': dict(TINY_RESNET, dropout_rate=0.2),
    'efficientnet_b0': dict(TINY_EFFICIENTNET, drop_path_rate=0.2),
    'mobilenetv3_small_100': TINY_MOBILENETV3,
}
SIZE = 32
PREPROCESSING = {'image_size': SIZE, 'eval_crop_fraction': 1.0, 'interpolation': 'bilinear',
                 'mean_rgb': [1.0, 2.0, 3.0], 'std_rgb': [4.0, 5.0, 6.0]}


def random_variables(name, seed=0):
  """Variables of the tiny model with random values (shapes from jax.eval_shape: no compile)."""
  linen = create_model(name, num_classes=10, **FAMILIES[name])
  shapes = jax.eval_shape(lambda: linen.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
  rng = np.random.RandomState(seed)

  def value(path, leaf):
    kind, shape = str(path[-1].key), leaf.shape
    if kind == 'kernel':
      return (rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))).astype(leaf.dtype)
    low, high = {'var': (0.5, 1.5), 'scale': (0.8, 1.2)}.get(kind, (-0.2, 0.2))
    return rng.uniform(low, high, shape).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(value, shapes)


def write_converter_checkpoint(directory, name, variables):
  """A checkpoint as the converters write it (`core.save_converted`)."""
  core.save_converted(str(directory), variables, {
      'model': name, 'model_kwargs': FAMILIES[name], 'num_classes': 10,
      'preprocessing': PREPROCESSING})
  return str(directory)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """name -> directory of a converter-written checkpoint of the tiny model (written once)."""
  root, written = tmp_path_factory.mktemp('converted'), {}

  def get(name):
    if name not in written:
      written[name] = write_converter_checkpoint(root / name, name, random_variables(name))
    return written[name]
  return get


@pytest.fixture(scope='module')
def tiny(checkpoint):
  """name -> a fresh NNX copy of the checkpoint's model (read once)."""
  loaded = {}

  def get(name):
    if name not in loaded:
      loaded[name] = senet_nnx.from_checkpoint(checkpoint(name))
    return nnx.clone(loaded[name])
  return get


def images(n=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, SIZE, SIZE, 3))


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@nnx.jit
def forward(model, x, key):
  return model(x, rngs=key)


def pure(model, kind):
  return jax.device_get(nnx.state(model, kind).to_pure_dict())


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_logits_and_statistics_equal_linen_in_train_and_eval(name, checkpoint, tiny):
  # A converter-written checkpoint of each family: the NNX model vs the Linen model applied
  # to the checkpoint's variables as `load_params` reads them.
  model, linen = tiny(name), create_model(name, num_classes=10, **FAMILIES[name])
  assert isinstance(model.to_nnx__module, type(linen))
  variables = load_params(checkpoint(name))
  linen_forward = jax.jit(lambda v, x, key, train: linen.apply(
      v, x, train=train, mutable=['batch_stats'] if train else False, rngs={'dropout': key}),
                          static_argnames='train')
  x, key = images(), jax.random.key(7)

  model.eval()
  close(forward(model, x, key), linen_forward(variables, x, key, False))
  # eval mode leaves every variable (the BatchNorm statistics included) as it was
  jax.tree.map(np.testing.assert_array_equal, senet_nnx.linen_variables(model), variables)

  model.train()
  assert (model.use_running_average, model.deterministic) == (False, False)
  got = forward(model, x, key)
  want, updates = linen_forward(variables, x, key, True)
  close(got, want)
  jax.tree.map(close, pure(model, nnx.BatchStat), updates['batch_stats'])
  # dropout / stochastic depth are on: another key, other logits
  assert not np.allclose(np.asarray(got), np.asarray(forward(model, x, jax.random.key(8))))


def test_batch_statistics_update_in_train_mode_by_hand_also_in_tree_mode(tiny):
  # nnx.jit's tree mode (graph=False: no per-call graph traversal; the other tests use graph
  # mode) carries the in-place updates back too. A zero image makes the stem convolution's
  # output zero: its BatchNorm's batch mean and variance are 0, so with momentum 0.9 the
  # running statistics become exactly 0.9 times the old ones.
  model = tiny('se_resnet18')
  before, params_before = pure(model, nnx.BatchStat), pure(model, nnx.Param)
  count = int(model.to_nnx__rngs.default.count[...])
  model.train()
  nnx.jit(lambda model, x: model(x), graph=False)(model, np.zeros((4, SIZE, SIZE, 3), np.float32))
  assert int(model.to_nnx__rngs.default.count[...]) == count + 1  # one dropout key drawn
  after = pure(model, nnx.BatchStat)
  for stat in ('mean', 'var'):
    close(after['bn1'][stat], 0.9 * before['bn1'][stat])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
  assert changed and all(changed), 'every BatchNorm mean and variance moves in train mode'
  jax.tree.map(np.testing.assert_array_equal, params_before, pure(model, nnx.Param))


def test_one_train_flag_and_nnx_view(tiny):
  model = tiny('se_resnet18')
  assert not model.use_running_average and not model.deterministic  # NNX: train mode first
  view = nnx.view(model, use_running_average=True, deterministic=True)
  assert view.use_running_average and not model.use_running_average
  model.set_attributes(use_running_average=True)
  with pytest.raises(ValueError, match='use_running_average=True and deterministic=False'):
    model(images())


def test_features_only_returns_the_linen_backbone_maps():
  kwargs = FAMILIES['se_resnet18']
  model = senet_nnx.create_model('se_resnet18', num_classes=10, input_size=SIZE,
                                 features_only=True, out_indices=(1, 3, 4), **kwargs)
  linen = create_model('se_resnet18', num_classes=10, features_only=True, out_indices=(1, 3, 4),
                       **kwargs)
  model.eval()
  x = images(2)
  got = forward(model, x, jax.random.key(0))
  want = jax.jit(linen.apply)(senet_nnx.linen_variables(model), x)
  assert [f.shape for f in got] == [(2, 8, 8, 8), (2, 2, 2, 16), (2, 1, 1, 32)]  # /4, /16, /32
  jax.tree.map(close, got, want)
  assert 'fc' in senet_nnx.linen_variables(model)['params']  # the classifier's variables


@pytest.fixture(scope='module')
def example():
  spec = importlib.util.spec_from_file_location('nnx_finetune',
                                                os.path.join(ROOT, 'examples', 'nnx_finetune.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_example_finetunes_every_parameter_and_lowers_the_loss(example, tiny):
  (train_images, train_labels), _ = example.load_digits(SIZE)
  assert train_images.shape[1:] == (SIZE, SIZE, 3) and len(set(train_labels)) == 10
  model = tiny('se_resnet18')
  before = pure(model, nnx.Param)
  batch = (train_images[:32], train_labels[:32])
  losses = example.finetune(model, itertools.repeat(batch), steps=4, learning_rate=3e-3)
  assert losses[-1] < losses[0], losses
  same = [jax.tree_util.keystr(p) for p, s in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(np.array_equal, before, pure(model, nnx.Param)))[0] if s]
  assert not same, f'parameters the loop did not change: {same}'


def test_checkpoint_round_trip(checkpoint, tiny, tmp_path):
  model = tiny('se_resnet18')  # from_checkpoint of a converter output
  assert isinstance(model.fc['kernel'], nnx.Param)
  assert isinstance(model.bn1['mean'], nnx.BatchStat)
  assert model.record == {'model': 'se_resnet18', 'num_classes': 10,
                          'preprocessing': PREPROCESSING,
                          'model_kwargs': json.loads(json.dumps(FAMILIES['se_resnet18']))}
  saved = load_params(checkpoint('se_resnet18'))
  model.train()
  forward(model, images(), jax.random.key(0))  # new BatchNorm statistics
  nnx.update(model, jax.tree.map(lambda p: p * 2.0, nnx.state(model, nnx.Param)))
  out = senet_nnx.save_checkpoint(model, str(tmp_path / 'out'))
  assert out == str(tmp_path / 'out' / 'checkpoints' / '0')

  written = load_params(str(tmp_path / 'out'))
  assert set(written) == {'params', 'batch_stats'}
  jax.tree.map(np.testing.assert_array_equal, written['params'], pure(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, written['batch_stats'], pure(model, nnx.BatchStat))
  np.testing.assert_array_equal(written['params']['fc']['kernel'],
                                2.0 * saved['params']['fc']['kernel'])
  assert not np.allclose(written['batch_stats']['bn1']['mean'], saved['batch_stats']['bn1']['mean'])
  # The tools rebuild the same model with the same preprocessing from the written record ...
  tools = loading.load(str(tmp_path / 'out'))
  assert (tools.num_classes, tools.image_size, tools.mean_rgb) == (10, SIZE, (1.0, 2.0, 3.0))
  assert tools.model.stage_planes == TINY_RESNET['stage_planes']
  # ... and it loads into another NNX model in place.
  other = tiny('se_resnet18')
  senet_nnx.load_checkpoint(other, str(tmp_path / 'out'))
  jax.tree.map(np.testing.assert_array_equal, pure(other, nnx.Param), written['params'])
  jax.tree.map(np.testing.assert_array_equal, pure(other, nnx.BatchStat), written['batch_stats'])


def test_variables_of_another_model_are_refused(tiny):
  model = tiny('se_resnet18')
  variables = senet_nnx.linen_variables(model)
  fc = variables['params']['fc']
  variables['params']['fc'] = {'kernel': fc['kernel'][:, :9], 'bias': fc['bias'][:9]}  # 9 classes
  with pytest.raises(CheckpointMismatchError, match=r'se_resnet18: params/fc/bias: checkpoint '
                     r'has shape \(9,\), the model expects \(10,\)'):
    senet_nnx.load_variables(model, variables)
  del variables['batch_stats']
  with pytest.raises(CheckpointMismatchError, match='batch_stats/bn1/mean is missing'):
    senet_nnx.load_variables(model, variables)


# ---- Slow (tests/suite_cost.py SLOW): a real main.py run, real hub files -------------------

def test_a_trainer_checkpoint_round_trips(digits_dir, tmp_path):
  import train
  from test_train import tiny_config
  config = tiny_config(digits_dir, num_train_steps=2, checkpoint_every_steps=2)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  model = senet_nnx.from_checkpoint(workdir)
  saved = load_params(workdir)
  linen = create_model(config.model, num_classes=10, **config.model_kwargs.to_dict())
  model.eval()
  x = images()
  close(forward(model, x, None), jax.jit(linen.apply)(saved, x))
  assert model.record['preprocessing']['interpolation'] == config.interpolation
  senet_nnx.save_checkpoint(model, str(tmp_path / 'nnx'))
  jax.tree.map(np.testing.assert_array_equal, load_params(str(tmp_path / 'nnx')), saved)
  assert loading.load(str(tmp_path / 'nnx')).eval_crop_fraction == config.eval_crop_fraction


def test_pretrained_hub_weights_give_timm_logits(tmp_path, monkeypatch):
  from test_convert import compare, randomised_timm, torch_logits
  from test_hub import ARCH, COMMITS, REPO, add_snapshot, timm
  reference = randomised_timm(ARCH)
  timm.models._hub.save_for_hf(reference, str(tmp_path / 'save'), safe_serialization=True)
  add_snapshot(str(tmp_path / 'hub'), REPO, COMMITS[0],
               {name: tmp_path / 'save' / name for name in ('config.json', 'model.safetensors')})
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  model = senet_nnx.create_model('mobilenetv3_small_100', pretrained=REPO)
  model.eval()
  x = np.random.RandomState(0).uniform(-1.0, 1.0, (2, 64, 64, 3)).astype(np.float32)
  compare(torch_logits(reference, x), forward(model, x, None))
  assert model.record['preprocessing']['mean_rgb'] == [127.5] * 3  # timm's, recorded
  tuned = senet_nnx.create_model('mobilenetv3_small_100', pretrained=REPO, num_classes=10)
  assert tuned.classifier['kernel'].shape == (1024, 10)
  assert not np.any(np.asarray(tuned.classifier['kernel'][...]))  # zero head for fine-tuning
