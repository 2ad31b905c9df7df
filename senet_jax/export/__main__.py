r"""Export a checkpoint for serving: StableHLO, TF SavedModel, TFLite (float32 / int8), ONNX.

    python -m senet_jax.export --checkpoint=workdir/quickstart --format=savedmodel \
        --output=/tmp/qs_savedmodel

Formats: stablehlo (jax.export, symbolic batch), savedmodel (jax2tf), tflite (float32),
tflite_int8 (post-training quantization calibrated on --calibration_split of the training
dataset), onnx (tf2onnx from the float32 TFLite model). Every artifact takes uint8 NHWC images
at the checkpoint's image_size (already resized / center-cropped) and applies the weights' own
mean/std inside; it returns float32 logits. `<output>.preprocessing.json` holds the run record
(model, classes, preprocessing: `senet_jax.checkpoint.record`). The written artifact is then
run in its own runtime against the JAX logits.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile

import numpy as np

from senet_jax.checkpoint import record
from senet_jax.errors import OutputWriteError, write_failure_cause
from senet_jax.export import serving
from senet_jax.utils import cli

FLOAT_TOLERANCE = 1e-4  # max |diff| <= 1e-4 * max |logit|
RECORD_SUFFIX = '.preprocessing.json'  # the run record beside the artifact


def calibration_images(dataset: str, split: str, data_dir: str | None, count: int,
                       prep) -> np.ndarray:
  """`count` uint8 images of a split with the eval transform `prep` (a record.Preprocessing:
  center crop + resize)."""
  import tensorflow as tf
  from senet_jax.data import pipeline, preprocess
  source = pipeline.open_source(dataset, split, data_dir)
  out = []
  for i in range(min(count, len(source))):
    image = preprocess.decode_image(tf.constant(source[i]['image']))
    image = preprocess.eval_image(image, prep.image_size, prep.interpolation,
                                  prep.eval_crop_fraction)
    out.append(np.asarray(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)))
  return np.stack(out)


def export(servable: serving.Servable, fmt: str, output: str,
           calibration: np.ndarray | None = None) -> None:
  """Writes `output` in format `fmt` (via a temporary path: never half an artifact).

  A write failure (disk full, permission, I/O) raises OutputWriteError (exit 4) naming the
  output; the temporary files are removed and nothing is left at `output`.
  """
  serving.check_supported(servable, fmt)
  if os.path.exists(output):
    raise serving.ExportError(f'--output={output!r} exists; choose a new path')
  parent = os.path.dirname(os.path.abspath(output))
  try:
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix='.export-', dir=parent)
    _write_artifact(servable, fmt, output, work, calibration)
  except Exception as err:  # noqa: BLE001 - only write failures are re-labelled
    cause = write_failure_cause(err)
    if cause is None:
      raise
    for leftover in (output, output + RECORD_SUFFIX):
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      elif os.path.lexists(leftover):
        os.remove(leftover)
    raise OutputWriteError(f'writing --output={output} failed: {cause} ({type(err).__name__}: '
                           f'{(str(err).splitlines() or [""])[0][:200]}); nothing was written '
                           f'there. Free space or choose another path') from err


def _write_artifact(servable, fmt: str, output: str, work: str, calibration) -> None:
  from senet_jax.export import tf_formats
  try:
    result = os.path.join(work, 'artifact')
    if fmt == 'stablehlo':
      with open(result, 'wb') as f:
        f.write(serving.export_stablehlo(servable))
    elif fmt == 'savedmodel':
      tf_formats.save_savedmodel(servable, result)
    else:
      saved = os.path.join(work, 'savedmodel')
      # int8: a static batch of 1 (on-device use; dynamic shapes add ops that quantize badly).
      tf_formats.save_savedmodel(servable, saved, batch=1 if fmt == 'tflite_int8' else None)
      if fmt == 'tflite_int8' and calibration is None:
        raise serving.ExportError('--format=tflite_int8 needs calibration images')
      data = tf_formats.tflite_bytes(saved, calibration if fmt == 'tflite_int8' else None)
      tflite = result if fmt.startswith('tflite') else os.path.join(work, 'float.tflite')
      with open(tflite, 'wb') as f:
        f.write(data)
      if fmt == 'onnx':
        tf_formats.save_onnx(tflite, result)
    os.replace(result, output)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  record.write_file(output + RECORD_SUFFIX, exported_record(servable, fmt))


def exported_record(servable, fmt: str) -> record.Record:
  """The run record written beside an artifact: the model, its preprocessing and provenance,
  the format and its input; the training run's own fields (config, step) and the checkpoint's
  integrity seal stay with the checkpoint."""
  run = servable.record or record.Record(servable.name, servable.num_classes,
                                         servable.preprocessing)
  kept = {k: v for k, v in run.extra.items() if k != 'integrity'}
  return dataclasses.replace(run, config='', step=None, input_next_step=None,
                             extra={**kept, 'format': fmt, 'input': 'uint8 NHWC'})


def run(fmt: str, path: str, images: np.ndarray) -> np.ndarray:
  """Logits of an exported artifact, run in its own runtime."""
  from senet_jax.export import tf_formats
  if fmt == 'stablehlo':
    with open(path, 'rb') as f:
      return serving.run_stablehlo(f.read(), images)
  runner = {'savedmodel': tf_formats.run_savedmodel, 'tflite': tf_formats.run_tflite,
            'tflite_int8': tf_formats.run_tflite, 'onnx': tf_formats.run_onnx}[fmt]
  return runner(path, images)


def reference_logits(servable: serving.Servable, images: np.ndarray) -> np.ndarray:
  """The JAX logits the artifact must reproduce."""
  import jax
  return np.asarray(jax.jit(serving.serving_fn(servable))(servable.variables, images))


def verify(servable, fmt: str, path: str, images: np.ndarray) -> dict:
  """Runs the artifact on `images`: relative max error (float) or top-1 agreement (int8)."""
  ref, got = reference_logits(servable, images), run(fmt, path, images)
  agreement = float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1)))
  rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
  return {'relative_error': rel, 'top1_agreement': agreement, 'images': len(images)}


def main(argv=None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  p = cli.parser(__doc__)
  p.add_argument('--checkpoint', required=True, help='training workdir or converter output')
  p.add_argument('--format', required=True, choices=serving.FORMATS)
  p.add_argument('--output', required=True, help='file (directory for savedmodel)')
  p.add_argument('--calibration_dataset', default='', help='default: the checkpoint\'s dataset')
  p.add_argument('--calibration_split', default='train')
  p.add_argument('--calibration_images', type=int, default=200)
  p.add_argument('--data_dir', default=None)
  return cli.run(_main, p.parse_args(argv))


def _main(args) -> int:
  serving.check_tools(args.format)  # a missing converter: before the checkpoint is even read
  servable = serving.load(args.checkpoint)
  serving.check_supported(servable, args.format)
  calibration = None
  if args.format == 'tflite_int8':
    dataset = args.calibration_dataset or servable.config.get('dataset')
    if not dataset:
      raise serving.ExportError('--format=tflite_int8: give --calibration_dataset (the '
                                'checkpoint does not record its dataset)')
    data_dir = args.data_dir or servable.config.get('data_dir') or None
    calibration = calibration_images(dataset, args.calibration_split, data_dir,
                                     args.calibration_images, servable.preprocessing)
  export(servable, args.format, args.output, calibration)
  probe = np.random.RandomState(0).randint(
      0, 256, (2, servable.image_size, servable.image_size, 3)).astype(np.uint8)
  try:
    check = verify(servable, args.format, args.output, probe)
  except ImportError as err:  # e.g. onnxruntime is not installed: the artifact stays
    print(f'wrote {args.output}; not verified ({err})')
    return 0
  print(f'wrote {args.output} ({args.format}, {servable.name}); on 2 random images: max |diff| '
        f'{check["relative_error"]:.2e} of max |logit|, top-1 agreement '
        f'{100 * check["top1_agreement"]:.0f}%')
  return 0


if __name__ == '__main__':
  sys.exit(main())
