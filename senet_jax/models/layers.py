"""Building blocks shared by every model: convolutions, norms, activations, stochastic depth.

Convolutions are one module, `Conv2d`, whose parameter is always the Flax kernel
`(kh, kw, in_channels // groups, out_channels)`, so weights do not depend on how the convolution
is computed. How it is computed is the requested `impl` resolved by the model's
`senet_jax.ops.ConvPolicy` (built once by `create_model` / `models.builder`): XLA:CPU runs
grouped and depthwise convolutions 10-100x slower than dense ones (see
`senet_jax/ops/conv_impls.py`), so on CPU they are reformulated; on GPU/TPU
`feature_group_count` is used. Max pooling comes from
`senet_jax/ops/pooling.py` (its gradient is written by hand for XLA:CPU).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from senet_jax.ops import conv_impls
from senet_jax.ops.policy import ConvPolicy
from senet_jax.ops.pooling import max_pool  # noqa: F401  (layers.max_pool for the models)

Array = jax.Array
Dtype = Any

PADDING_MODES = ('tf_same', 'symmetric')


def check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ValueError naming `field` when `value` is not one of `allowed`."""
  if value not in allowed:
    raise ValueError(f'{field}={value!r} is not valid; allowed values: {list(allowed)}')


def conv_kernel_init_fan_out(groups: int = 1) -> Callable:
  """The official EfficientNet/TF initialiser N(0, sqrt(2 / fan_out)).

  fan_out = kh * kw * out_channels / groups, which for a depthwise kernel is kh * kw as in the
  TensorFlow code (its depthwise kernel is [kh, kw, C, 1]).
  """
  def init(key, shape, dtype=jnp.float32):
    kh, kw, _, out = shape
    fan_out = kh * kw * out // groups
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)
  return init


def dense_kernel_init_uniform_fan_out(key, shape, dtype=jnp.float32):
  """The official EfficientNet dense initialiser U(-1/sqrt(out), 1/sqrt(out))."""
  limit = 1.0 / math.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


# He-normal on fan_out, as torchvision/timm initialise ResNet convolutions.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def kernel_hw(kernel_size: int | Sequence[int]) -> tuple[int, int]:
  """(kh, kw) of a square (int) or rectangular ((kh, kw)) kernel size."""
  if isinstance(kernel_size, int):
    return kernel_size, kernel_size
  kh, kw = kernel_size
  return int(kh), int(kw)


def explicit_padding(kernel_size: int | Sequence[int], padding: str, dilation: int = 1):
  """Returns the lax padding for a mode: 'tf_same' (asymmetric), 'symmetric' (k // 2 per side)
  or 'valid' (none)."""
  check_choice('padding', padding, PADDING_MODES + ('valid',))
  if padding == 'tf_same':
    # lax 'SAME' equals TensorFlow 'SAME': the extra pixel of an even total goes bottom/right.
    return 'SAME'
  if padding == 'valid':
    return ((0, 0), (0, 0))
  ph, pw = (dilation * (k - 1) // 2 for k in kernel_hw(kernel_size))
  return ((ph, ph), (pw, pw))


class Conv2d(nn.Module):
  """2-D convolution (NHWC) with groups, TF or symmetric padding and a selectable kernel impl.

  Attributes:
    features: output channels.
    kernel_size: square kernel size, or (kh, kw) for a rectangular kernel (1x7, 7x1, ...).
    strides: square stride.
    groups: feature groups (1: dense, == in_channels: depthwise).
    padding: 'tf_same' or 'symmetric', or explicit ((lo, hi), (lo, hi)).
    use_bias: add a bias.
    impl: the requested formulation, one of `conv_impls.IMPLS`: 'auto' (the fastest on the
      policy's backend), 'xla' (`lax.conv_general_dilated`), 'shift' (depthwise), 'dense',
      'split', 'direct' (grouped), 'matmul' (1x1), 'im2col', 'im2col_grad' (dense kxk).
    policy: where the model runs (`ConvPolicy`: backend, CPU convolution engine, C++ kernels);
      `policy.choose(impl, kernel shape, groups, input size)` picks the formulation. The
      default `ConvPolicy()` knows no backend and runs XLA's convolution ('auto' -> 'xla').
    kernel_init: kernel initialiser.
    dtype: compute dtype; parameters stay `param_dtype`.
  """
  features: int
  kernel_size: int | tuple[int, int] = 3
  strides: int = 1
  groups: int = 1
  padding: Any = 'symmetric'
  use_bias: bool = False
  impl: str = 'auto'
  policy: ConvPolicy = ConvPolicy()
  kernel_init: Callable = he_normal_fan_out
  bias_init: Callable = nn.initializers.zeros
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(f'groups={self.groups} must divide in ({in_features}) and out '
                       f'({self.features}) channels of {self.name}')
    kh, kw = kernel_hw(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, in_features // self.groups, self.features), self.param_dtype)
    padding = self.padding
    if isinstance(padding, str):
      padding = explicit_padding(self.kernel_size, padding)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv_impls.conv(x, kernel, self.strides, padding, self.groups, self.impl,
                         self.policy)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class ConvBNAct(nn.Module):
  """conv -> BatchNorm -> activation, as submodules 'conv' and 'bn' (timm's BasicConv2d).

  `conv` and `norm` are constructors carrying the model-wide settings (impl, dtype, BN
  momentum/epsilon); `act=None` leaves the output linear.
  """
  features: int
  kernel_size: int | tuple[int, int] = 1
  strides: int = 1
  padding: Any = 'symmetric'
  use_bias: bool = False
  act: Callable[[Array], Array] | None = nn.relu
  conv: Callable[..., nn.Module] = Conv2d
  norm: Callable[..., nn.Module] = nn.BatchNorm

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = self.conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                  use_bias=self.use_bias, name='conv')(x)
    x = self.norm(use_running_average=not train, name='bn')(x)
    return x if self.act is None else self.act(x)


def batch_norm(train: bool, *, momentum: float = 0.9, epsilon: float = 1e-5,
               dtype: Dtype = jnp.float32, zero_init: bool = False, name: str | None = None):
  """BatchNorm in NHWC with float32 statistics whatever the compute dtype.

  Under `jax.jit` with a batch sharded over devices, the mean/var reductions are global: every
  device sees the statistics of the whole global batch (no `axis_name` needed).
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
      param_dtype=jnp.float32, scale_init=nn.initializers.zeros if zero_init else
      nn.initializers.ones, name=name)


def hard_sigmoid(x: Array) -> Array:
  """relu6(x + 3) / 6, as in MobileNetV3 and timm."""
  return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def hard_swish(x: Array) -> Array:
  """x * hard_sigmoid(x)."""
  return x * hard_sigmoid(x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'relu6': nn.relu6,
    'swish': nn.swish,
    'silu': nn.swish,
    'sigmoid': nn.sigmoid,
    'tanh': jnp.tanh,
    'hard_sigmoid': hard_sigmoid,
    'hard_swish': hard_swish,
    'gelu': nn.gelu,
    'identity': lambda x: x,
}


def get_activation(name: str, field: str = 'activation') -> Callable[[Array], Array]:
  """Looks up an activation by name; the error names `field` and the allowed names."""
  check_choice(field, name, tuple(ACTIVATIONS))
  return ACTIVATIONS[name]


def max_pool_ceil(x: Array, window: int, stride: int) -> Array:
  """Max pool with PyTorch's `ceil_mode=True` and no padding (the Caffe SENet stem)."""
  def extra(size):
    out = -(-(size - window) // stride) + 1
    return max((out - 1) * stride + window - size, 0)
  return max_pool(x, window, stride, ((0, extra(x.shape[1])), (0, extra(x.shape[2]))))


def avg_pool_ceil(x: Array, window: int, stride: int) -> Array:
  """Average pool as PyTorch's `AvgPool2d(ceil_mode=True, count_include_pad=False)`: a last,
  partial window on odd sizes averages only the pixels it covers (timm's `avg_down`)."""
  def extra(size):
    out = -(-(size - window) // stride) + 1
    return max((out - 1) * stride + window - size, 0)
  pads = ((0, extra(x.shape[1])), (0, extra(x.shape[2])))
  return nn.avg_pool(x, (window, window), (stride, stride), pads, count_include_pad=False)


def max_pool_padded(x: Array, window: int, stride: int) -> Array:
  """Max pool with symmetric padding window // 2 (torchvision's stem)."""
  p = window // 2
  return max_pool(x, window, stride, ((p, p), (p, p)))


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample, rescales kept samples.

  Identity when `deterministic` or `rate == 0`; draws from the 'dropout' rng otherwise.
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class FeatureTap(nn.Module):
  """Identity on the last feature map (named 'features'): a hook for CAM / Grad-CAM."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x


def avg_pool(x: Array, window: int, stride: int, padding: int = 0,
             count_include_pad: bool = True) -> Array:
  """Average pool with symmetric zero padding; `count_include_pad` as in PyTorch/Caffe."""
  pads = ((padding, padding), (padding, padding))
  return nn.avg_pool(x, (window, window), (stride, stride), pads,
                     count_include_pad=count_include_pad)


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """PyTorch's AdaptiveAvgPool2d(size): cell i averages rows floor(i*H/size)..ceil((i+1)*H/size).

  Written as two small averaging matrices, so any H, W (also smaller than `size`) works.
  """
  def matrix(length):
    m = np.zeros((size, length), np.float32)
    for i in range(size):
      start, end = (i * length) // size, -(-((i + 1) * length) // size)
      m[i, start:end] = 1.0 / (end - start)
    return jnp.asarray(m, x.dtype)

  if x.shape[1] == x.shape[2] == size:
    return x
  return jnp.einsum('ih,jw,nhwc->nijc', matrix(x.shape[1]), matrix(x.shape[2]), x)


def global_avg_pool(x: Array) -> Array:
  """Mean over H, W accumulated in float32 (bf16 sums over 49-3136 positions lose digits)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays or `ShapeDtypeStruct`s."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


