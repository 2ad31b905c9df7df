"""Hub loading: `create_model(..., pretrained='timm/...')` and `init_from='hf:timm/...'`.

The hub cache is built in a temporary folder with huggingface_hub's own layout
(models--timm--X/{blobs,refs/main,snapshots/<commit>/...}) from a random-weight timm model saved
by timm's own `save_for_hf`, and read with HF_HUB_OFFLINE=1 (there is no network here).
"""
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
huggingface_hub = pytest.importorskip('huggingface_hub')

from senet_jax.convert import hub  # noqa: E402
from senet_jax import create_model  # noqa: E402  (pretrained= lives above models/)
from tests.test_convert import compare, randomised_timm, torch_logits  # noqa: E402

ARCH = 'tf_mobilenetv3_small_100'  # the smallest timm model the converter maps (2.5 M params)
REPO = f'timm/{ARCH}.in1k'
COMMITS = ('a' * 40, 'b' * 40)


def add_snapshot(cache, repo, commit, files, ref='main'):
  """Writes files as huggingface_hub stores them: blobs by hash, snapshot symlinks, a ref."""
  root = os.path.join(cache, 'models--' + repo.replace('/', '--'))
  for name, source in files.items():
    data = open(source, 'rb').read()
    blob = os.path.join(root, 'blobs', hashlib.sha256(data).hexdigest())
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, 'wb') as f:
      f.write(data)
    link = os.path.join(root, 'snapshots', commit, name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
  os.makedirs(os.path.join(root, 'refs'), exist_ok=True)
  with open(os.path.join(root, 'refs', ref), 'w') as f:
    f.write(commit)


@pytest.fixture(scope='module')
def hub_cache(tmp_path_factory):
  """A hub cache with two revisions of one timm repo (different random weights)."""
  base = tmp_path_factory.mktemp('hf')
  cache = str(base / 'hub')
  references = {}
  for seed, commit in enumerate(COMMITS):
    reference = randomised_timm(ARCH)
    if seed:  # a second revision with other weights
      with torch.no_grad():
        reference.classifier.weight.mul_(-1.0)
    saved = base / f'save{seed}'
    timm.models._hub.save_for_hf(reference, str(saved), safe_serialization=True)
    add_snapshot(cache, REPO, commit, {'config.json': saved / 'config.json',
                                       'model.safetensors': saved / 'model.safetensors'},
                 ref='main' if seed == 0 else 'other')
    references[commit] = reference
  return cache, references


@pytest.fixture
def offline(hub_cache, monkeypatch):
  cache, references = hub_cache
  monkeypatch.setenv('HF_HUB_CACHE', cache)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  return cache, references


def pixels(n=2, size=64):
  return np.random.RandomState(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_pretrained_matches_timm_and_records_its_preprocessing(offline):
  cache, references = offline
  model = create_model('mobilenetv3_small_100', pretrained=REPO)
  module, variables = model.unbind()
  directory = hub.resolve(REPO)
  # Cached beside the hub cache, keyed by the snapshot's commit.
  assert directory == os.path.join(os.path.dirname(cache), 'senet_jax',
                                   'models--timm--tf_mobilenetv3_small_100.in1k', COMMITS[0])
  prep = hub.read_meta(directory)['preprocessing']
  # timm's own pretrained_cfg for this architecture: Inception mean/std 0.5, bilinear, 0.875.
  cfg = timm.models.get_pretrained_cfg(ARCH)
  assert prep['mean_rgb'] == pytest.approx([255 * v for v in cfg.mean])
  assert prep['std_rgb'] == pytest.approx([255 * v for v in cfg.std])
  assert (prep['interpolation'], prep['eval_crop_fraction']) == (cfg.interpolation, cfg.crop_pct)
  x = (pixels() - np.float32(prep['mean_rgb'])) / np.float32(prep['std_rgb'])
  compare(torch_logits(references[COMMITS[0]], x), jax.jit(module.apply)(variables, x))


def test_revision_selects_the_snapshot_and_converts_once(offline):
  cache, references = offline
  other = hub.resolve(REPO + '@other')
  assert other.endswith(COMMITS[1])
  mtime = os.path.getmtime(os.path.join(other, hub.META_FILE))
  assert hub.resolve(f'hf:{REPO}@{COMMITS[1]}') == other  # a commit hash works too
  assert os.path.getmtime(os.path.join(other, hub.META_FILE)) == mtime  # not converted again
  module, variables = create_model('mobilenetv3_small_100', pretrained=REPO + '@other').unbind()
  x = pixels()
  compare(torch_logits(references[COMMITS[1]], x / 127.5 - 1), jax.jit(module.apply)(
      variables, x / 127.5 - 1))


def test_rehead_keeps_the_backbone(offline):
  module, variables = create_model('mobilenetv3_small_100', pretrained=REPO,
                                   num_classes=10).unbind()
  assert variables['params']['classifier']['kernel'].shape == (1024, 10)
  assert not np.any(variables['params']['classifier']['kernel'])  # zero-initialised head
  _, full = create_model('mobilenetv3_small_100', pretrained=REPO).unbind()
  np.testing.assert_array_equal(variables['params']['conv_stem']['kernel'],
                                full['params']['conv_stem']['kernel'])
  backbone = create_model('mobilenetv3_small_100', pretrained=REPO, features_only=True)
  assert [i.num_chs for i in backbone.feature_info] == [16, 16, 24, 48, 576]
  np.testing.assert_array_equal(backbone.unbind()[1]['params']['conv_stem']['kernel'],
                                full['params']['conv_stem']['kernel'])


def test_clear_errors(offline, tmp_path):
  cache, _ = offline
  with pytest.raises(hub.HubError, match='timm/no_such_model.in1k'):
    hub.resolve('timm/no_such_model.in1k')
  with pytest.raises(hub.HubError, match='@nope' ):
    hub.resolve(REPO + '@nope')
  # A snapshot without its weights file names the file.
  add_snapshot(cache, 'timm/legacy_seresnet18.in1k', 'c' * 40,
               {'config.json': _write(tmp_path / 'c.json', {'architecture': 'legacy_seresnet18'})})
  with pytest.raises(hub.HubError, match='model.safetensors'):
    hub.resolve('timm/legacy_seresnet18.in1k')
  with pytest.raises(hub.HubError, match='holds mobilenetv3_small_100 weights'):
    create_model('mobilenetv3_large_100', pretrained=REPO)
  with pytest.raises(hub.HubError, match='owner/name'):
    hub.parse('legacy_seresnet50')


def test_unsupported_architecture_is_named(offline, tmp_path):
  cache, _ = offline
  shutil.copy(os.path.join(cache, 'models--timm--tf_mobilenetv3_small_100.in1k', 'snapshots',
                           COMMITS[0], 'model.safetensors'), tmp_path / 'w.safetensors')
  add_snapshot(cache, 'timm/vit_tiny_patch16_224.augreg_in21k', 'd' * 40,
               {'config.json': _write(tmp_path / 'v.json', {'architecture': 'vit_tiny_patch16_224'}),
                'model.safetensors': tmp_path / 'w.safetensors'})
  with pytest.raises(hub.HubError, match='vit_tiny_patch16_224'):
    hub.resolve('timm/vit_tiny_patch16_224.augreg_in21k')


def test_init_from_hub_in_a_config(offline):
  from senet_jax.training.checkpoint import CheckpointError, load_params
  directory = hub.checkpoint_dir('hf:' + REPO)
  assert load_params(directory)['params']['classifier']['kernel'].shape == (1024, 1000)
  assert hub.checkpoint_dir('/some/dir') == '/some/dir'
  with pytest.raises(CheckpointError, match='init_from.*timm/missing'):
    hub.checkpoint_dir('hf:timm/missing')


def _write(path, obj):
  path.write_text(json.dumps(obj))
  return path
