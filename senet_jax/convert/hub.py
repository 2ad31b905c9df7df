"""Pretrained weights by hub name: timm repositories on the Hugging Face Hub.

    create_model('se_resnet50', pretrained='timm/legacy_seresnet50.in1k')
    config.init_from = 'hf:timm/legacy_seresnet50.in1k'        # '...@<revision>' pins one

Files are resolved through `huggingface_hub` (its cache, `HF_HUB_CACHE` / `HF_HOME`,
`HF_HUB_OFFLINE`, revisions), read without executing code (`model.safetensors` with the numpy
API and `config.json`), converted once, and the converted checkpoint is cached next to the hub
cache (`<hub cache>/../senet_jax/<repo folder>/<commit>/`), keyed by the snapshot's commit so a
new revision converts again. The checkpoint records the weights' own preprocessing (timm's
`pretrained_cfg`: input size, crop, interpolation, mean/std).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import numpy as np

from senet_jax.checkpoint import record
from senet_jax.convert import core

PREFIX = 'hf:'
WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
META_FILE = 'preprocessing.json'


class HubError(core.ConversionError):
  """A hub repository, revision or file that cannot be had, named in the message."""


def is_hub_spec(spec: str) -> bool:
  """True for `config.init_from` values that name a hub repository ('hf:owner/name')."""
  return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
  """'hf:timm/x.in1k@rev' or 'timm/x.in1k' -> ('timm/x.in1k', 'rev' or None)."""
  repo = spec[len(PREFIX):] if is_hub_spec(spec) else spec
  repo, _, revision = repo.partition('@')
  if repo.count('/') != 1 or not all(repo.split('/')):
    raise HubError(f'pretrained={spec!r}: expected a hub repository "owner/name" '
                   f'(e.g. timm/legacy_seresnet50.in1k), optionally "@revision"')
  return repo, revision or None


def hub_cache_dir() -> str:
  """The huggingface_hub cache in force (HF_HUB_CACHE, else HF_HOME/hub, else the default)."""
  if os.environ.get('HF_HUB_CACHE'):
    return os.environ['HF_HUB_CACHE']
  if os.environ.get('HF_HOME'):
    return os.path.join(os.environ['HF_HOME'], 'hub')
  from huggingface_hub import constants
  return constants.HF_HUB_CACHE


def _offline() -> bool:
  # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported.
  from huggingface_hub import constants
  value = os.environ.get('HF_HUB_OFFLINE', '')
  return value.upper() in ('1', 'ON', 'YES', 'TRUE') or bool(constants.HF_HUB_OFFLINE)


def download(repo: str, filename: str, revision: str | None, cache_dir: str) -> str:
  """Local path of `filename` in `repo` at `revision` (from the cache when offline)."""
  import huggingface_hub
  from huggingface_hub import errors
  where = f'{repo}' + (f'@{revision}' if revision else '')
  try:
    return huggingface_hub.hf_hub_download(repo, filename, revision=revision,
                                           cache_dir=cache_dir, local_files_only=_offline())
  except errors.RepositoryNotFoundError as err:
    raise HubError(f'hub repository {repo!r} not found (or not accessible)') from err
  except errors.RevisionNotFoundError as err:
    raise HubError(f'hub repository {repo!r} has no revision {revision!r}') from err
  except errors.LocalEntryNotFoundError as err:  # before its base class EntryNotFoundError
    raise HubError(f'{filename!r} of hub repository {where!r} is not in the hub cache '
                   f'{cache_dir!r} and it cannot be downloaded (offline: HF_HUB_OFFLINE='
                   f'{os.environ.get("HF_HUB_OFFLINE", "")!r}, or no network)') from err
  except errors.EntryNotFoundError as err:
    raise HubError(f'hub repository {where!r} has no file {filename!r} (senet_jax reads '
                   f'timm repositories with {WEIGHTS_FILE} and {CONFIG_FILE})') from err


def preprocessing(config: dict) -> core.Preprocessing:
  """The eval preprocessing of timm's `config.json` (`pretrained_cfg`), mean/std on 0..255."""
  cfg = config.get('pretrained_cfg', config)
  try:
    size = int(cfg['input_size'][-1])
    return core.Preprocessing(
        size, float(cfg.get('crop_pct', 0.875)), str(cfg.get('interpolation', 'bicubic')),
        tuple(255.0 * float(v) for v in cfg['mean']),
        tuple(255.0 * float(v) for v in cfg['std']))
  except (KeyError, TypeError, ValueError, IndexError) as err:
    raise HubError(f'{CONFIG_FILE}: pretrained_cfg lacks a valid input_size/mean/std '
                   f'({err!r})') from err


def converted_dir(repo: str, commit: str, cache_dir: str) -> str:
  """Where the converted checkpoint of `repo` at `commit` is cached (beside the hub cache)."""
  folder = 'models--' + repo.replace('/', '--')
  return os.path.join(os.path.dirname(os.path.abspath(cache_dir)), 'senet_jax', folder, commit)


def resolve(spec: str, cache_dir: str | None = None) -> str:
  """Directory of the converted checkpoint for a hub spec, converting on first use.

  The result is a valid `config.init_from` and holds `preprocessing.json` (the meta record).
  """
  repo, revision = parse(spec)
  cache_dir = cache_dir or hub_cache_dir()
  config_path = download(repo, CONFIG_FILE, revision, cache_dir)
  commit = os.path.basename(os.path.dirname(config_path))  # snapshots/<commit>/config.json
  out = converted_dir(repo, commit, cache_dir)
  if os.path.isfile(os.path.join(out, META_FILE)):
    return out
  weights_path = download(repo, WEIGHTS_FILE, revision, cache_dir)
  with open(config_path) as f:
    config = json.load(f)
  _convert_into(out, repo, commit, config, weights_path)
  return out


def _convert_into(out: str, repo: str, commit: str, config: dict, weights_path: str) -> None:
  """Converts into a temporary folder, then renames it: a reader never sees half a checkpoint."""
  from senet_jax.convert import timm
  from senet_jax.convert.safe_read import load_safetensors  # damage: one line naming the file
  arch = config.get('architecture') or repo.split('/')[-1].split('.')[0]
  if arch not in timm.MODELS:
    raise HubError(f'hub repository {repo!r} holds timm architecture {arch!r}, which senet_jax '
                   f'cannot convert; supported: {", ".join(sorted(timm.MODELS))}')
  module, variables = timm.from_timm(load_safetensors(weights_path), arch)
  meta = record.Record(timm.MODELS[arch][0], module.num_classes, preprocessing(config),
                       timm.MODELS[arch][1], extra={'source': 'hub', 'repo': repo,
                                                    'revision': commit, 'source_model': arch})
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.converting-', dir=os.path.dirname(out))
  try:
    core.save_converted(tmp, variables, meta)
    record.write_file(os.path.join(tmp, META_FILE), meta)
    try:
      os.rename(tmp, out)
    except OSError:  # another process converted the same snapshot first: keep theirs
      if not os.path.isfile(os.path.join(out, META_FILE)):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_dir(init_from: str) -> str:
  """`config.init_from` as a checkpoint directory: 'hf:owner/name' is resolved (and converted)."""
  if not is_hub_spec(init_from):
    return init_from
  from senet_jax.training.checkpoint import CheckpointError
  try:
    directory = resolve(init_from)
  except core.ConversionError as err:  # reported like any unusable init_from (main.py)
    raise CheckpointError(f'config.init_from={init_from!r}: {err}') from err
  prep = read_meta(directory)['preprocessing']
  logging.info('%s: converted weights in %s; their preprocessing: %s', init_from, directory, prep)
  return directory


def read_meta(directory: str) -> dict:
  """The run record (model, kwargs, classes, preprocessing) of a converted checkpoint, as a
  dict in the current shape (a file written before the record's renames reads the same)."""
  return record.read_file(os.path.join(directory, META_FILE)).to_json()


def load(spec: str, cache_dir: str | None = None) -> tuple[dict, dict]:
  """(meta, variables) of the hub weights named by `spec` (numpy, on host)."""
  from senet_jax.training import checkpoint
  directory = resolve(spec, cache_dir)
  return read_meta(directory), checkpoint.load_params(directory)


def bind_pretrained(module, name: str, spec: str, overrides: dict, num_classes: int | None):
  """`module` (built by create_model) with the hub weights: the bound module.

  The weights' own model fields (e.g. layout='v1.5') are applied unless `overrides` sets
  them; a `num_classes` other than the weights' re-initialises the classifier.
  """
  meta, variables = load(spec)
  if meta['model'] != name:
    raise HubError(f'pretrained={spec!r} holds {meta["model"]} weights (timm '
                   f'{meta["source_model"]}), not {name}: use create_model({meta["model"]!r}, ...)')
  kwargs = {k: v for k, v in meta['model_kwargs'].items() if k not in overrides}
  module = module.clone(**kwargs, num_classes=num_classes or meta['num_classes'])
  if module.num_classes != meta['num_classes']:
    variables = zero_head(variables, module.num_classes)
  return module.bind(variables)


def zero_head(variables: dict, num_classes: int) -> dict:
  """A `num_classes`-way classifier initialised at zero (big_vision's fine-tuning default).

  Zeros start fine-tuning from uniform predictions, and need no compile of the whole model.
  """
  params = dict(variables['params'])
  head = core.head_name(params)
  kernel = params[head]['kernel']
  params[head] = {'kernel': np.zeros(kernel.shape[:-1] + (num_classes,), kernel.dtype),
                  'bias': np.zeros((num_classes,), kernel.dtype)}
  return {**variables, 'params': params}
