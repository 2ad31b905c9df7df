"""Export for serving: StableHLO, TF SavedModel, TFLite (float32 / int8) and ONNX.

`python -m senet_jax.export --checkpoint=DIR --format=FORMAT --output=PATH`; see `__main__`.
"""
