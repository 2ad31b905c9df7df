"""Flax NNX front end: every senet_jax model as an `nnx.Module`, with its variables.

    from flax import nnx
    from senet_jax import nnx as senet_nnx
    model = senet_nnx.create_model('se_resnet50', pretrained='timm/legacy_seresnet50.in1k')
    model = senet_nnx.from_checkpoint('workdir/quickstart')   # a main.py run or converter output
    model.eval(); logits = model(images)                     # NHWC float images
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    senet_nnx.save_checkpoint(model, '/ckpt/finetuned')      # what main.py and the tools read

The Linen model is built by the package's one build path (`models.builder.build_model`, hub
weights through `convert.hub`) and wrapped with `flax.nnx.bridge.ToNNX`: parameters are
`nnx.Param`, BatchNorm statistics `nnx.BatchStat`, held as attributes named like the Linen
variable tree (`model.fc['kernel']`, `model.layer1_0['bn1']['mean']`), so `nnx.state` filters,
`nnx.split/merge`, `nnx.jit` and `nnx.Optimizer(..., wrt=nnx.Param)` work as for any NNX model.

Train / eval mode follows NNX: a new model is in training mode like `nnx.BatchNorm` and
`nnx.Dropout`; `model.eval()` / `model.train()` (or `nnx.view(model, use_running_average=...,
deterministic=...)`) switch it. The Linen models have one `train` flag, so the two attributes
must agree. In training mode a call updates the BatchNorm statistics in place and draws dropout /
stochastic-depth keys from the model's `Rngs` ('dropout' stream, else 'default').
"""
from __future__ import annotations

import json
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables

COLLECTIONS = {'params': nnx.Param, 'batch_stats': nnx.BatchStat}


class SenetNNX(nnx.bridge.ToNNX):
  """A senet_jax Linen model as an NNX module (see the module docstring).

  The bridge holds the variables and the Linen module; `__call__` applies it itself so that
  BatchNorm statistics are written into the existing `nnx.BatchStat`s (the bridge's call puts
  new Variable objects in their place) and a given dropout key reaches the model as is.
  Attributes besides the variables carry the `to_nnx__` prefix, the bridge's mark for what is
  not a Linen variable: the mode flags and the record `save_checkpoint` writes.
  """

  def __init__(self, module, *, rngs: nnx.Rngs, record: dict):
    super().__init__(module, rngs=rngs)
    self.to_nnx__use_running_average = False
    self.to_nnx__deterministic = False
    self.to_nnx__record = json.dumps(record, sort_keys=True)  # static and hashable

  # Properties, so that `train()`, `eval()` and `set_attributes` find them (hasattr) while the
  # bridge, which turns every other instance attribute into a Linen variable, does not.
  @property
  def use_running_average(self) -> bool:
    """BatchNorm uses its stored statistics (eval) instead of the batch's (train)."""
    return self.to_nnx__use_running_average

  @use_running_average.setter
  def use_running_average(self, value: bool):
    self.to_nnx__use_running_average = bool(value)

  @property
  def deterministic(self) -> bool:
    """Dropout and stochastic depth are off (eval) or on (train)."""
    return self.to_nnx__deterministic

  @deterministic.setter
  def deterministic(self, value: bool):
    self.to_nnx__deterministic = bool(value)

  def set_view(self, use_running_average: bool | None = None,
               deterministic: bool | None = None):
    """Used by `nnx.view(model, use_running_average=..., deterministic=...)`."""
    if use_running_average is not None:
      self.use_running_average = use_running_average
    if deterministic is not None:
      self.deterministic = deterministic

  @property
  def record(self) -> dict:
    """Model name, fields, classes and preprocessing: the record `save_checkpoint` writes."""
    return json.loads(self.to_nnx__record)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None):
    """Logits (or, for `features_only`, the list of feature maps) of NHWC float images.

    In training mode dropout and stochastic depth draw their key from `rngs` when given (an
    `nnx.Rngs`: its 'dropout' stream, else 'default'; or a key, used as is, as `nnx.Dropout`
    does), else from the model's own `Rngs`.
    """
    if self.use_running_average != self.deterministic:
      raise ValueError(
          f'use_running_average={self.use_running_average} and deterministic='
          f'{self.deterministic}: senet_jax models have one train flag, set both alike '
          f'(model.train() / model.eval())')
    variables = bridge_variables.nnx_attrs_to_linen_vars(self._variables())
    if self.use_running_average:
      return self.to_nnx__module.apply(variables, x, train=False)
    if rngs is None:
      rngs = self.to_nnx__rngs
    key = rngs if isinstance(rngs, jax.Array) else rngs.dropout()
    out, updates = self.to_nnx__module.apply(variables, x, train=True, mutable=['batch_stats'],
                                             rngs={'dropout': key})
    # In place (the bridge would put new Variable objects in): references to them stay valid.
    for path, value in flax.traverse_util.flatten_dict(updates.get('batch_stats', {})).items():
      node = getattr(self, path[0])
      for name in path[1:]:
        node = node[name]
      node.set_value(value)
    return out

  def _variables(self) -> dict:
    """The Linen variables among the attributes (what the bridge's own `__call__` collects)."""
    return {k: v for k, v in vars(self).items() if not k.startswith(('to_nnx__', '_pytree__'))}


def _place(model: SenetNNX, variables: dict) -> None:
  """Sets Linen `variables` as the model's attributes (the bridge's own layout)."""
  for name, value in bridge_variables.linen_vars_to_nnx_attrs(variables).items():
    setattr(model, name, nnx.data(value))


def _default_preprocessing(image_size: int) -> dict:
  from senet_jax.convert import core
  return {'image_size': int(image_size), 'eval_crop_fraction': 0.875, 'interpolation': 'bicubic',
          'mean_rgb': list(core.IMAGENET_MEAN), 'std_rgb': list(core.IMAGENET_STD)}


def _json_ready(value):
  return json.loads(json.dumps(value, default=list))


def create_model(name: str, *, num_classes: int | None = None, pretrained: str | None = None,
                 features_only: bool = False, out_indices: tuple[int, ...] | None = None,
                 rngs: nnx.Rngs | None = None, input_size: int | None = None,
                 dtype: str = 'float32', conv_impl: str = 'auto', **model_kwargs) -> SenetNNX:
  """A registered model as an NNX module, freshly initialised or with hub weights.

  Args:
    name: a name from `senet_jax.models.list_models()`.
    num_classes: classifier size (default 1000, or the pretrained weights' own).
    pretrained: a hub repository, e.g. 'timm/legacy_seresnet50.in1k' (see `convert.hub`).
    features_only: a feature backbone returning the list of feature maps (timm semantics);
      `out_indices` picks some of them. Its variables are the classifier's.
    rngs: `nnx.Rngs` for initialisation ('params', else 'default') and dropout ('dropout',
      else 'default'); default `nnx.Rngs(0)`.
    input_size: side of the dummy image that initialises the variables (default: the
      model's registered resolution, or the pretrained weights'); also recorded as the
      preprocessing image size.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    conv_impl: convolution formulation (`senet_jax.ops.IMPLS`, 'auto' picks per backend).
    **model_kwargs: model fields, e.g. `se_reduction=8`, `stage_sizes=(1, 1, 1, 1)`.
  """
  from senet_jax.models import builder, registry
  module = builder.build_model(name, num_classes=num_classes or 1000, dtype=dtype,
                               conv_impl=conv_impl, model_kwargs=model_kwargs)
  record = {'model': name, 'model_kwargs': dict(model_kwargs), 'num_classes': module.num_classes}
  variables = None
  if pretrained:  # as registry.create_model(pretrained=...) does
    from senet_jax.convert import hub
    module, variables = hub.bind_pretrained(module, name, pretrained, model_kwargs,
                                            num_classes).unbind()
    meta = hub.read_meta(hub.resolve(pretrained))
    record = {'model': name, 'model_kwargs': {**meta['model_kwargs'], **model_kwargs},
              'num_classes': module.num_classes, 'preprocessing': meta['preprocessing'],
              'pretrained': pretrained}
  size = input_size or record.get('preprocessing', {}).get('image_size') or max(
      registry.model_info(name).resolution, registry.min_resolution(module))
  record.setdefault('preprocessing', _default_preprocessing(size))
  return _wrap(module, variables, record, features_only, out_indices, rngs, size)


def from_checkpoint(directory: str, *, features_only: bool = False,
                    out_indices: tuple[int, ...] | None = None,
                    rngs: nnx.Rngs | None = None) -> SenetNNX:
  """The model of a senet_jax checkpoint (a `main.py` workdir or a converter output).

  Built and loaded as the tools do (`senet_jax.loading.load`): model name, fields, classes
  and preprocessing come from the checkpoint's record, the newest checkpoint's variables fill it.
  """
  from senet_jax import loading
  from senet_jax.utils import quiet
  loaded = loading.load(directory)
  if loaded.config:  # a training checkpoint: its config
    name, kwargs = loaded.config['model'], loaded.config['model_kwargs']
  else:  # a converter output: its meta record
    with quiet.orbax_read_only():
      meta = loading.read_meta(directory)
    name, kwargs = meta['model'], meta['model_kwargs']
  record = {'model': name, 'model_kwargs': _json_ready(kwargs),
            'num_classes': loaded.num_classes, 'preprocessing': {
                'image_size': loaded.image_size, 'eval_crop_fraction': loaded.eval_crop_fraction,
                'interpolation': loaded.interpolation, 'mean_rgb': list(loaded.mean_rgb),
                'std_rgb': list(loaded.std_rgb)}}
  return _wrap(loaded.model, loaded.variables, record, features_only, out_indices, rngs,
               loaded.image_size)


def _wrap(module, variables, record, features_only, out_indices, rngs, size) -> SenetNNX:
  """ToNNX around `module` (a feature backbone if asked) holding `variables` (or fresh ones)."""
  if features_only or out_indices is not None:
    from senet_jax.models import features
    module = features.features_only(module, out_indices)
  model = SenetNNX(module, rngs=rngs if rngs is not None else nnx.Rngs(0),
                   record=_json_ready(record))
  if variables is None:
    # One jitted init (the bridge's lazy_init runs op by op): variables never depend on values.
    init = jax.jit(module.init, static_argnames='train')
    variables = init({'params': model.to_nnx__rngs.params()},
                     jnp.zeros((1, size, size, 3), jnp.float32), train=False)
  _place(model, {k: jax.tree.map(jnp.asarray, v) for k, v in variables.items()
                 if k in COLLECTIONS})
  return model


def linen_variables(model: SenetNNX) -> dict:
  """The model's variables in the Linen layout: {'params': ..., 'batch_stats': ...}.

  `create_model(name).apply(linen_variables(model), x, train=False)` gives `model(x)` in eval
  mode; these are also what `save_checkpoint` writes.
  """
  out = {}
  for collection, kind in COLLECTIONS.items():
    state = nnx.state(model, kind).to_pure_dict()
    if state or collection == 'params':
      out[collection] = state
  return out


def load_variables(model: SenetNNX, variables: dict) -> None:
  """Updates the model in place from Linen-layout variables ({'params', 'batch_stats'}).

  Every variable of the model must be present with its shape; the error names the first
  that is not (values are cast to the model's dtypes).
  """
  from senet_jax.training.checkpoint import CheckpointMismatchError, first_shape_mismatch
  target = linen_variables(model)
  given = {k: v for k, v in variables.items() if k in target}
  mismatch = first_shape_mismatch(given, target, extra_ok=False)
  if mismatch:
    raise CheckpointMismatchError(f'the variables do not fit the NNX model '
                                  f'{model.record["model"]}: {mismatch}')
  pure: dict = {}
  for collection in given:  # the NNX layout: both collections under each module's name
    for path, value in flax.traverse_util.flatten_dict(given[collection]).items():
      pure[path] = value
  state = nnx.state(model, nnx.Any(*COLLECTIONS.values()))
  cast = lambda var, value: var.replace(jnp.asarray(value, var.get_value().dtype))
  nnx.replace_by_pure_dict(state, flax.traverse_util.unflatten_dict(pure), cast)
  nnx.update(model, state)


def load_checkpoint(model: SenetNNX, directory: str) -> None:
  """Loads the newest checkpoint under `directory` (workdir or converter output) into `model`."""
  from senet_jax.training.checkpoint import load_params
  load_variables(model, load_params(directory))


def save_checkpoint(model: SenetNNX, directory: str, *, preprocessing: dict | None = None,
                    **record: Any) -> str:
  """Writes the model's variables as a senet_jax checkpoint in a new `directory`.

  With the converters' writer (`convert.core.save_converted`) and meta record (model, fields,
  classes, preprocessing): `main.py --config.init_from=<directory>`, `--mode=eval` and the
  tools (predict, export, ...) read it, as do `from_checkpoint` and
  `training.checkpoint.load_params`. `preprocessing` (image_size, eval_crop_fraction,
  interpolation, mean_rgb, std_rgb) replaces the recorded one; `record` adds fields to the
  meta record. Returns the checkpoint's path.
  """
  from senet_jax.convert import core
  meta = {**model.record, 'source': 'nnx', **record}
  if preprocessing is not None:
    meta['preprocessing'] = {**meta['preprocessing'], **_json_ready(preprocessing)}
  variables = jax.tree.map(np.asarray, linen_variables(model))
  return core.save_converted(directory, variables, meta)
