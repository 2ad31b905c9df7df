"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

Both use the last feature map A (the model's 'features' tap, right before global pooling):
- CAM_c = sum_k w[k, c] A_k with w the classifier kernel (exact for GAP + linear heads, which
  every registered model has);
- Grad-CAM_c = relu(sum_k alpha_k A_k), alpha_k = mean over positions of d logit_c / d A_k.
Maps are upsampled (bilinear) to the image size and scaled to [0, 1].
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = 'features'


def _apply_with_tap(model, variables, images, delta=None):
  """Logits and the feature map; `delta` is added to the features (for their gradient)."""
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name == FEATURES and (
        len(context.module.path) == 1):
      if delta is not None:
        out = out + delta
      captured['features'] = out
    return out

  with nn.intercept_methods(interceptor):
    logits = model.apply(variables, images, train=False)
  return logits, captured['features']


def head_kernel(variables) -> jax.Array:
  """The (features, classes) kernel of the classifier ('fc' or 'classifier')."""
  params = variables['params']
  return params['fc' if 'fc' in params else 'classifier']['kernel']


def _normalise(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  maps = jax.image.resize(maps, (maps.shape[0], *size), 'bilinear')
  lo = maps.min(axis=(1, 2), keepdims=True)
  hi = maps.max(axis=(1, 2), keepdims=True)
  return (maps - lo) / jnp.maximum(hi - lo, 1e-8)


def cam(model, variables, images, classes) -> jax.Array:
  """CAM maps (N, H, W) in [0, 1] for one class per image."""
  _, feats = _apply_with_tap(model, variables, images)
  w = head_kernel(variables)[:, jnp.asarray(classes)]                # (K, N)
  maps = jnp.einsum('nhwk,kn->nhw', feats.astype(jnp.float32), w)
  return _normalise(maps, images.shape[1:3])


def grad_cam(model, variables, images, classes) -> jax.Array:
  """Grad-CAM maps (N, H, W) in [0, 1] for one class per image."""
  _, feats = _apply_with_tap(model, variables, images)
  classes = jnp.asarray(classes)

  def score(delta):
    logits, _ = _apply_with_tap(model, variables, images, delta)
    return jnp.sum(jnp.take_along_axis(logits, classes[:, None], axis=1))

  grads = jax.grad(score)(jnp.zeros_like(feats))
  alpha = grads.mean(axis=(1, 2), keepdims=True)
  maps = jax.nn.relu(jnp.sum(alpha * feats, axis=-1))
  return _normalise(maps, images.shape[1:3])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8 RGB image with a jet-coloured heatmap blended on top."""
  import matplotlib
  colours = matplotlib.colormaps['jet'](np.asarray(heatmap))[..., :3]
  image = np.asarray(image, np.float32)
  if image.max() > 1.0:
    image = image / 255.0
  return (255 * np.clip((1 - alpha) * image + alpha * colours, 0, 1)).astype(np.uint8)


def save_overlays(images_uint8, maps, paths: list[str]) -> list[str]:
  """Writes one PNG overlay per image."""
  from PIL import Image
  for image, heatmap, path in zip(images_uint8, np.asarray(maps), paths):
    Image.fromarray(overlay(image, heatmap)).save(path)
  return paths

