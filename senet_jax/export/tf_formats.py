"""TF SavedModel (jax2tf), TFLite (float32 and int8 post-training quantization) and ONNX.

SavedModel: `jax2tf` with native serialization (the model as StableHLO inside TF), weights as
`tf.Variable`s, a `serving_default` signature taking uint8 images `[batch, S, S, 3]` and
returning `{'logits': float32 [batch, classes]}`.
TFLite: the TFLite converter lowers that SavedModel's StableHLO to TFLite ops; int8 PTQ
calibrates activation ranges on real images (a calibration split) and keeps float32 logits.
ONNX: `tf2onnx` from the float32 TFLite model (tf2onnx cannot read jax2tf's XlaCallModule).
"""
from __future__ import annotations

from typing import Iterable

import jax
import numpy as np

from senet_jax.export import serving

SIGNATURE = 'serving_default'


def save_savedmodel(servable: serving.Servable, output: str, batch: int | None = None) -> None:
  """Writes a SavedModel directory (`batch=None`: any batch size)."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  size = servable.image_size
  fn = serving.tflite_friendly(serving.serving_fn(servable))
  poly = None if batch else [None, f'(b, {size}, {size}, 3)']
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False)
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(tf.Variable, jax.device_get(servable.variables))

  @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.uint8, name='images')],
               autograph=False)
  def serve(images):
    return {'logits': converted(module.variables_, images)}

  module.serve = serve
  tf.saved_model.save(module, output, signatures={SIGNATURE: serve})


def run_savedmodel(path: str, images: np.ndarray) -> np.ndarray:
  """Logits of a SavedModel's serving signature, run by TensorFlow."""
  import tensorflow as tf
  loaded = tf.saved_model.load(path)
  return loaded.signatures[SIGNATURE](images=tf.constant(images))['logits'].numpy()


def tflite_bytes(saved_model: str, calibration: Iterable[np.ndarray] | None = None) -> bytes:
  """A TFLite flatbuffer from a SavedModel; with `calibration` images, int8 PTQ."""
  import tensorflow as tf
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
  if calibration is not None:
    images = list(calibration)
    if not images:
      raise serving.ExportError('int8 quantization needs calibration images; got none')
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def _interpreter(path: str):
  try:  # LiteRT, the TFLite runtime's new home, when installed
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import warnings
    import tensorflow as tf
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # tf.lite.Interpreter's deprecation notice
      return tf.lite.Interpreter(model_path=path)
  return Interpreter(model_path=path)


def run_tflite(path: str, images: np.ndarray) -> np.ndarray:
  """Logits of a TFLite model, run by the TFLite (LiteRT) interpreter."""
  interpreter = _interpreter(path)
  inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  static = inp['shape_signature'][0] != -1  # int8 models: a batch of 1, one image at a time
  batches = np.split(images, len(images)) if static else [images]
  if not static:
    interpreter.resize_tensor_input(inp['index'], list(images.shape))
  interpreter.allocate_tensors()
  logits = []
  for batch in batches:
    interpreter.set_tensor(inp['index'], batch.astype(inp['dtype']))
    interpreter.invoke()
    logits.append(np.array(interpreter.get_tensor(out['index'])))
  return np.concatenate(logits)


def save_onnx(tflite_path: str, output: str, opset: int = 17) -> None:
  """ONNX from a float32 TFLite model, with tf2onnx."""
  try:
    import tf2onnx
  except ImportError as err:
    from senet_jax.utils.tf_host import TF_INSTALL
    raise serving.ExportError(f'--format=onnx needs tf2onnx ({TF_INSTALL})') from err
  tf2onnx.convert.from_tflite(tflite_path, opset=opset, output_path=output)


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
  """Logits of an ONNX model, run by onnxruntime."""
  import onnxruntime
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  return session.run(None, {session.get_inputs()[0].name: images})[0]
