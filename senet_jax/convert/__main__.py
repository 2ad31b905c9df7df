r"""Convert timm or Keras weights into a senet_jax checkpoint.

    python -m senet_jax.convert --from timm --model legacy_seresnet50 \
        --input model.safetensors --output /ckpt/se_resnet50_caffe
    python -m senet_jax.convert --from keras --model efficientnetb0 \
        --input efficientnetb0.h5 --output /ckpt/b0_keras
    # then: python main.py --config=configs/se_resnet50.py --workdir=/tmp/eval --mode=eval \
    #           --config.init_from=/ckpt/se_resnet50_caffe <flags printed by the converter>

Weights are read without executing code: safetensors (numpy API, no torch) and HDF5 (h5py).
PyTorch pickles (.pth/.pt/.bin) are refused unless --allow_pickle is given, and are then read
with torch.load(weights_only=True), which refuses to run code hidden in the file.
"""
from __future__ import annotations

import os
import sys

from senet_jax.checkpoint import record
from senet_jax.convert import core
from senet_jax.models import min_resolution
from senet_jax.utils import cli

PICKLE_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.pkl')


def read_state_dict(path: str, allow_pickle: bool = False) -> dict:
  """{name: numpy array} from a .safetensors file (or, with allow_pickle, a torch pickle)."""
  if not os.path.isfile(path):
    raise core.ConversionError(f'--input {path!r} does not exist')
  if path.endswith('.safetensors'):
    from senet_jax.convert.safe_read import load_safetensors
    return load_safetensors(path)
  if path.endswith(PICKLE_SUFFIXES):
    if not allow_pickle:
      raise core.ConversionError(
          f'{path!r} is a pickle, which can run arbitrary code when loaded. Use the '
          f'.safetensors file of the same weights, or pass --allow_pickle to read it with '
          f'torch.load(weights_only=True) (tensors only, no code).')
    return _read_pickle(path)
  raise core.ConversionError(f'--input {path!r}: expected a .safetensors file (or a torch '
                             f'pickle with --allow_pickle)')


def _read_pickle(path: str) -> dict:
  """{name: numpy array} of a torch pickle, read with torch.load(weights_only=True)."""
  try:
    import torch
  except ImportError as err:  # ModuleNotFoundError, or a broken torch install
    raise core.ConversionError(
        f'{path}: reading a PyTorch pickle needs torch, which cannot be imported ({err}); '
        f'`pip install torch`, or use the .safetensors file of the same weights') from err
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as err:  # noqa: BLE001 - UnpicklingError (code in the file), garbage, ...
    raise core.ConversionError(f'{path}: refused by torch.load(weights_only=True): '
                               f'{(str(err).splitlines() or [type(err).__name__])[0]}') from err
  if isinstance(state, dict):
    state = state.get('state_dict', state.get('model', state))
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
    raise core.ConversionError(f'{path}: expected a state dict {{name: tensor}} (or one under '
                               f'"state_dict" / "model"), got a {type(state).__name__} holding '
                               f'other values')
  return core.as_numpy_state_dict(state)


def convert(source: str, model: str, input_path: str, output: str, num_classes: int = 0,
            allow_pickle: bool = False, imagenet_rescaling: bool = True) -> dict:
  """Converts and writes the checkpoint; returns its meta record."""
  if source == 'timm':
    from senet_jax.convert import timm
    module, variables = timm.from_timm(read_state_dict(input_path, allow_pickle), model)
    prep = timm.preprocessing(model)
    overrides = timm.MODELS[model][1]
  elif source == 'keras':
    from senet_jax.convert import keras
    module, variables, prep = keras.from_keras(input_path, model, imagenet_rescaling)
    overrides = {}
  else:
    raise core.ConversionError(f'--from {source!r}: expected timm or keras')
  head = core.head_name(variables['params'])
  if num_classes and num_classes != module.num_classes:
    print(f'note: re-initialising the {module.num_classes}-way classifier as {num_classes}-way',
          file=sys.stderr)
    module = module.clone(num_classes=num_classes)
    variables = core.reinit_head(variables, module, head,
                                 max(64, min_resolution(module)))
  run = record.Record(_model_name(source, model), module.num_classes, prep, overrides, extra={
      'source': source, 'source_model': model, 'input': os.path.abspath(input_path)})
  core.save_converted(output, variables, run)
  record.write_file(os.path.join(output, 'preprocessing.json'), run)
  return run.to_json()


def _model_name(source: str, model: str) -> str:
  if source == 'timm':
    from senet_jax.convert import timm
    return timm.MODELS[model][0]
  from senet_jax.convert import keras
  return {**keras.MODELS, **keras.V2_MODELS}[model]


def config_flags(meta: dict) -> str:
  """The main.py flags that evaluate the converted weights with their own preprocessing."""
  p = meta['preprocessing']
  flags = [f"--config.model={meta['model']}", f"--config.num_classes={meta['num_classes']}",
           f"--config.image_size={p['image_size']}",
           f"--config.eval_crop_fraction={p['eval_crop_fraction']}",
           f"--config.interpolation={p['interpolation']}",
           f"--config.mean_rgb='{tuple(round(v, 4) for v in p['mean_rgb'])}'",
           f"--config.std_rgb='{tuple(round(v, 4) for v in p['std_rgb'])}'"]
  flags += [f'--config.model_kwargs.{k}={v}' for k, v in meta['model_kwargs'].items()]
  return ' '.join(flags)


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--from', dest='source', required=True, choices=['timm', 'keras'])
  p.add_argument('--model', required=True, help='timm name (e.g. legacy_seresnet50) or Keras '
                                               'name (efficientnetb0)')
  p.add_argument('--input', required=True, help='.safetensors (timm) or .h5 (Keras)')
  p.add_argument('--output', required=True, help='directory for the checkpoint')
  p.add_argument('--num_classes', type=int, default=0, help='re-head to this many classes')
  p.add_argument('--allow_pickle', action='store_true')
  p.add_argument('--keras_weights_none', action='store_true',
                 help='the Keras model was built with weights=None (no extra input rescaling)')
  return cli.run(_main, p.parse_args(argv))


def _main(args) -> int:
  meta = convert(args.source, args.model, args.input, args.output, args.num_classes,
                 args.allow_pickle, not args.keras_weights_none)
  print(f'wrote {args.output}/checkpoints/0 ({meta["model"]}, {meta["num_classes"]} classes)')
  print(f'evaluate with: python main.py --config=CONFIG --workdir=DIR --mode=eval '
        f'--config.init_from={args.output} {config_flags(meta)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
