"""Interchangeable formulations of grouped and depthwise 2-D convolutions (NHWC, HWIO kernels).

All formulations compute exactly the same function as `lax.conv_general_dilated` with
`feature_group_count=groups` (tests check forward values and gradients), they differ only in
speed per backend:

- 'xla': `lax.conv_general_dilated(feature_group_count=groups)`. Fast on GPU (cuDNN) and TPU.
  On XLA:CPU grouped/depthwise convolutions and especially their gradients are 10-100x slower
  than dense ones (jax-ml/jax#23713, #13800).
- 'shift': depthwise only, a sum of k*k shifted, strided slices times a per-channel weight.
  Elementwise work that XLA:CPU fuses well, forward and input gradient. Its weight gradient
  (k*k reductions over shifted slices, which XLA:CPU copies first) comes from the C++ kernel
  in `senet_jax.ops.kernels` when the policy allows them (built, one CPU device), in float32.
- 'dense': grouped only, the grouped kernel scattered into a block-diagonal dense kernel and one
  dense convolution. It does `groups` times the arithmetic, but XLA:CPU's dense convolution
  (oneDNN) is so much faster than its grouped one that this wins for ResNeXt widths.

- 'split': grouped only, the groups merged k at a time into block-diagonal dense kernels, one
  dense convolution per merged slice of channels (G / k of them), outputs concatenated. k is
  chosen so that a slice has ~16 input channels (`split_factor`): k = 1 is G separate dense
  convs (no wasted arithmetic, many small ops), k = G is 'dense'. On XLA:CPU this is 4-20x
  faster than 'dense' for the 3x3 convs of ResNeXt-50 (32x4d), fwd + bwd
  (benchmarks/grouped_conv.py).

- 'matmul': 1x1 dense convolutions as one `dot_general` over the channel axis (strided
  inputs subsampled first). XLA:CPU runs these 3-9x faster than the same 1x1
  `conv_general_dilated`, forward and backward, and 1x1 convs carry most of the FLOPs of
  EfficientNet and of bottleneck ResNets. Its weight gradient is written as one 2-D matmul
  (`channel_matmul`): autodiff's 4-D contraction over (N, H, W) made XLA:CPU copy the
  activations first and ran 1.5-3x slower than PyTorch's on the expanding 1x1 convs.

- 'im2col': dense kxk convs as k*k shifted slices concatenated on channels and one matmul
  (`channel_matmul`, so its weight gradient is one 2-D matmul too). On XLA:CPU, convs whose
  input is not larger than the kernel (a 3x3 conv on the 2x2 maps of the last ResNet stage at
  64 px) leave the fast convolution path for a generic one ~100x slower.
- 'im2col_grad': XLA's conv forward and input gradient, the weight gradient as im2col's one
  2-D matmul. Only faster with YNNPACK convolutions (jaxlib's default), whose weight gradient
  of kxk convs with <= 64 input channels or maps of <= 7 px is 1.3-2x slower than im2col's.

- 'direct': grouped (depthwise too, though 'shift' is the fast one there), stride 1, float32,
  a policy with kernels (one CPU device): the C++ kernels of `senet_jax.ops.kernels` (forward,
  weight gradient; the input gradient is a forward pass with the flipped kernel). Elsewhere
  it runs 'split'. 1.2-3x faster than 'split' on ResNeXt-50's shapes, forward + backward
  (benchmarks/grouped_conv.py).

Which formulation runs is decided by a `senet_jax.ops.policy.ConvPolicy` (built once per model
by `models.builder.build_model` / `create_model`, never while tracing): 'auto' picks per
backend: on CPU 'matmul' for 1x1, 'shift' for depthwise, 'direct' for other grouped
convolutions whose groups it handles well ('split' for the rest), 'im2col' on maps no larger
than the kernel, and for other dense kxk convs what is fastest on the CPU convolution engine in
use (Eigen once `senet_jax.utils.xla_flags.configure_xla_cpu()` ran: then plain 'xla'); 'xla'
on GPU / TPU.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from senet_jax.ops import kernels
from senet_jax.ops.policy import IMPLS, ConvPolicy, select_conv_policy  # noqa: F401  (IMPLS)

SPLIT_SLICE_CHANNELS = 16  # input channels per dense slice of 'split' (measured best on CPU)
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _policy(policy: ConvPolicy | None) -> ConvPolicy:
  """`policy`, or for a direct caller of these functions (tests, benchmarks) the current
  process's; models always pass the one their builder chose."""
  return policy if policy is not None else select_conv_policy()


def _pads(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: int, padding: Any):
  """((top, bottom), (left, right)) as nested tuples (hashable: custom-VJP static args)."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], (strides, strides), padding)
  return tuple(tuple(int(v) for v in p) for p in padding)


def strided_taps(xp, kh: int, kw: int, strides: int):
  """Yields (i, j, tap): for each kernel offset, the strided slice of the padded input `xp`
  that offset sees at every output position (N, Ho, Wo, C)."""
  out_h = (xp.shape[1] - kh) // strides + 1
  out_w = (xp.shape[2] - kw) // strides + 1
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(
          xp, (0, i, j, 0),
          (xp.shape[0], i + (out_h - 1) * strides + 1, j + (out_w - 1) * strides + 1,
           xp.shape[3]), (1, strides, strides, 1))


def conv_xla(x, kernel, strides: int, padding: Any, groups: int):
  """The reference formulation: `lax.conv_general_dilated` with feature groups."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding, dimension_numbers=_DIMS,
      feature_group_count=groups)


def conv_shift(x, kernel, strides: int, padding: Any, policy: ConvPolicy | None = None):
  """Depthwise conv as k*k shifted strided slices times per-channel weights. Where `policy`
  allows the C++ kernels (CPU, one device) and in float32, its weight gradient comes from the
  hand-written kernel in `senet_jax.ops.kernels` (XLA copies a shifted slice of the
  activations per tap there: 10-20x slower)."""
  pads = _pads(x.shape, kernel.shape, strides, padding)
  if kernel.shape[2:] == (1, x.shape[-1]) and _policy(policy).kernels_apply(x.dtype,
                                                                            kernel.dtype):
    return _conv_shift_kernel_grad(x, kernel, strides, pads)
  return _conv_shift(x, kernel, strides, pads)


def _conv_shift(x, kernel, strides: int, pads):
  kh, kw, _, out = kernel.shape
  channels = x.shape[-1]
  # lax, not jnp, in the k*k loop: the same HLO (slice, reshape, broadcast, multiply, add per
  # tap), but jnp's operators each trace as a nested jit with promotion checks. EfficientNet-B7
  # has ~1,100 taps, over a third of its traced equations; this cut its trace time by 8%.
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if out != channels:  # depth multiplier > 1: repeat input channels like TF/XLA group order.
    x = jnp.repeat(x, out // channels, axis=-1)
  xp = lax.pad(x, jnp.zeros((), dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
  y = None
  for i, j, patch in strided_taps(xp, kh, kw, strides):
    weight = lax.reshape(lax.slice(kernel, (i, j, 0, 0), (i + 1, j + 1, 1, out)), (out,))
    term = lax.mul(patch, lax.broadcast_in_dim(weight, patch.shape, (3,)))
    y = term if y is None else lax.add(y, term)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_shift_kernel_grad(x, kernel, strides, pads):
  return _conv_shift(x, kernel, strides, pads)


def _conv_shift_kernel_grad_fwd(x, kernel, strides, pads):
  return _conv_shift(x, kernel, strides, pads), (x, kernel)


def _conv_shift_kernel_grad_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  dw = kernels.depthwise_weight_grad(x, dy, kernel.shape[:2], strides, pads)
  if gathers_input_grad(kernel.shape[:2]):
    dx = conv_shift_input_grad(dy, kernel, strides, pads, x.shape)
  else:
    dx = jax.vjp(lambda x: _conv_shift(x, kernel, strides, pads), x)[1](dy)[0]
  return dx, dw[:, :, None, :].astype(kernel.dtype)


def gathers_input_grad(kernel_hw: Sequence[int]) -> bool:
  """Whether a depthwise conv's input gradient takes `conv_shift_input_grad`'s form: for 5x5
  and larger kernels, where it measured 2.8-6.8x faster than autodiff's on EfficientNet-B0's
  shapes; 3x3 kernels keep autodiff's, the gather form being 0.26-0.87x as fast there
  (`python benchmarks/depthwise_grad.py`, 2-core CPU, strides 1 and 2 alike)."""
  return min(kernel_hw) >= 5


def conv_shift_input_grad(dy, kernel, strides: int, pads, x_shape):
  """The input gradient of a depthwise `_conv_shift` as one more shifted multiply-add: `dy`
  dilated by the stride and padded so that a stride-1 pass of the flipped kernel gives dx.

  The same sums as autodiff's transpose (k*k padded copies of dy added up) in gather form,
  which XLA fuses into one loop like the forward; `gathers_input_grad` says where it is used."""
  kh, kw = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  (top, _), (left, _) = pads
  dz = lax.pad(dy, jnp.zeros((), dy.dtype), (
      (0, 0, 0),
      (kh - 1 - top, x_shape[1] + top - (out_h - 1) * strides - 1, strides - 1),
      (kw - 1 - left, x_shape[2] + left - (out_w - 1) * strides - 1, strides - 1),
      (0, 0, 0)))
  return _conv_shift(dz, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))


_conv_shift_kernel_grad.defvjp(_conv_shift_kernel_grad_fwd, _conv_shift_kernel_grad_bwd)


def block_diagonal_kernel(kernel, groups: int):
  """(kh, kw, Cin/g, Cout) grouped kernel -> (kh, kw, Cin, Cout) dense block-diagonal kernel."""
  kh, kw, cin_g, cout = kernel.shape
  cout_g = cout // groups
  blocks = kernel.reshape(kh, kw, cin_g, groups, cout_g)
  eye = jnp.eye(groups, dtype=kernel.dtype)
  # dense[h, w, g*cin_g + i, G*cout_g + o] = blocks[h, w, i, g, o] * [g == G]
  dense = jnp.einsum('hwigo,gG->hwgiGo', blocks, eye)
  return dense.reshape(kh, kw, groups * cin_g, cout)


def split_factor(groups: int, in_channels: int) -> int:
  """Groups merged per dense slice in 'split': the largest divisor k of `groups` with
  k * (in_channels / groups) <= SPLIT_SLICE_CHANNELS (at least 1)."""
  per_group = in_channels // groups
  k = max(1, SPLIT_SLICE_CHANNELS // per_group)
  while groups % k:
    k -= 1
  return k


def conv_split(x, kernel, strides: int, padding: Any, groups: int,
               policy: ConvPolicy | None = None):
  """Grouped conv as G / k dense convs over channel slices, k groups block-diagonal in each
  (each dense conv formulated as `policy` says)."""
  policy = _policy(policy)
  k = split_factor(groups, x.shape[-1])
  slices = groups // k
  cin, cout = x.shape[-1] // slices, kernel.shape[-1] // slices
  outs = [conv(x[..., s * cin:(s + 1) * cin],
               block_diagonal_kernel(kernel[..., s * cout:(s + 1) * cout], k),
               strides, padding, 1, 'auto', policy) for s in range(slices)]
  return outs[0] if slices == 1 else jnp.concatenate(outs, axis=-1)


def conv_direct(x, kernel, strides: int, padding: Any, groups: int,
                policy: ConvPolicy | None = None):
  """Grouped conv from the C++ kernels in `senet_jax.ops.kernels` (forward, input gradient as a
  forward with the flipped kernel, weight gradient); 'split' where they cannot run (stride > 1,
  not float32, or a `policy` without kernels: several devices, no compiler)."""
  policy = _policy(policy)
  pads = _pads(x.shape, kernel.shape, strides, padding)
  if strides != 1 or not policy.kernels_apply(x.dtype, kernel.dtype):
    return conv_split(x, kernel, strides, pads, groups, policy)
  return _conv_direct(x, kernel, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_direct(x, kernel, pads):
  return kernels.grouped_conv_forward(x, kernel, pads)


def _conv_direct_fwd(x, kernel, pads):
  return kernels.grouped_conv_forward(x, kernel, pads), (x, kernel)


def _conv_direct_bwd(pads, residuals, dy):
  x, kernel = residuals
  kh, kw, cin_g, cout = kernel.shape
  groups = x.shape[-1] // cin_g
  # dx is the stride-1 grouped conv of dy with the kernel flipped in space and, per group,
  # transposed (in <-> out); the padding mirrors so that dx has x's size.
  flipped = kernel[::-1, ::-1].reshape(kh, kw, cin_g, groups, cout // groups)
  flipped = flipped.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups, groups * cin_g)
  dx_pads = ((kh - 1 - pads[0][0], x.shape[1] - dy.shape[1] + pads[0][0]),
             (kw - 1 - pads[1][0], x.shape[2] - dy.shape[2] + pads[1][0]))
  dx = kernels.grouped_conv_forward(dy, flipped, dx_pads)
  dw = kernels.grouped_conv_weight_grad(x, dy, kernel.shape, pads)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_conv_direct.defvjp(_conv_direct_fwd, _conv_direct_bwd)


@jax.custom_vjp
def channel_matmul(x, w):
  """x (..., Cin) @ w (Cin, Cout); the weight gradient is one (Cin, M) x (M, Cout) matmul."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_matmul_fwd(x, w):
  return channel_matmul(x, w), (x, w)


def _channel_matmul_bwd(residuals, dy):
  x, w = residuals
  dx = lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
  dw = jnp.dot(x.reshape(-1, x.shape[-1]).T, dy.reshape(-1, dy.shape[-1]),
               preferred_element_type=jnp.float32)
  return dx, dw.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def conv_matmul(x, kernel, strides: int, padding: Any):
  """1x1 conv as a contraction over channels (after subsampling for stride > 1)."""
  (pt, pb), (pl, pr) = _pads(x.shape, kernel.shape, strides, padding)
  if pt or pb or pl or pr:
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  return channel_matmul(x, kernel[0, 0])


def conv_im2col(x, kernel, strides: int, padding: Any):
  """Dense kxk conv as one matmul over k*k concatenated shifted slices."""
  kh, kw, cin, cout = kernel.shape
  cols = _im2col_columns(x, kernel.shape, strides, padding)
  return channel_matmul(cols, kernel.reshape(kh * kw * cin, cout))


def _im2col_columns(x, kernel_shape, strides: int, padding: Any):
  """(N, Ho, Wo, kh*kw*Cin): the input patch of every output position, tap-major."""
  kh, kw, _, _ = kernel_shape
  (pt, pb), (pl, pr) = _pads(x.shape, kernel_shape, strides, padding)
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return jnp.concatenate([tap for _, _, tap in strided_taps(xp, kh, kw, strides)], axis=-1)


def conv_im2col_grad(x, kernel, strides: int, padding: Any):
  """XLA conv forward and input gradient; the weight gradient is im2col's 2-D matmul."""
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  return _conv_im2col_grad(x, kernel, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x, kernel, strides, padding):
  return conv_xla(x, kernel, strides, padding, 1)


def _conv_im2col_grad_fwd(x, kernel, strides, padding):
  return conv_xla(x, kernel, strides, padding, 1), (x, kernel)


def _conv_im2col_grad_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: conv_xla(x, kernel, strides, padding, 1), x)
  cols = _im2col_columns(x, kernel.shape, strides, padding)
  dw = jnp.dot(cols.reshape(-1, cols.shape[-1]).T, dy.reshape(-1, dy.shape[-1]),
               preferred_element_type=jnp.float32)
  return input_vjp(dy)[0], dw.reshape(kernel.shape).astype(kernel.dtype)


_conv_im2col_grad.defvjp(_conv_im2col_grad_fwd, _conv_im2col_grad_bwd)


def conv(x, kernel, strides: int, padding: Any, groups: int, impl: str = 'auto',
         policy: ConvPolicy | None = None):
  """Grouped/depthwise/dense convolution computed with the formulation `impl`, as `policy`
  resolves it for this kernel shape and input size (`ConvPolicy.choose`)."""
  policy = _policy(policy)
  impl = policy.choose(impl, kernel.shape, groups, x.shape[1:3])
  if impl == 'matmul':
    return conv_matmul(x, kernel, strides, padding)
  if impl == 'im2col':
    return conv_im2col(x, kernel, strides, padding)
  if impl == 'im2col_grad':
    return conv_im2col_grad(x, kernel, strides, padding)
  if impl == 'shift':
    return conv_shift(x, kernel, strides, padding, policy)
  if impl == 'split':
    return conv_split(x, kernel, strides, padding, groups, policy)
  if impl == 'direct':
    return conv_direct(x, kernel, strides, padding, groups, policy)
  if impl == 'dense':  # then as any dense conv (im2col on tiny maps, where XLA:CPU is slow)
    return conv(x, block_diagonal_kernel(kernel, groups), strides, padding, 1, 'auto', policy)
  return conv_xla(x, kernel, strides, padding, groups)
