"""Which convolution formulation runs where: decided once per model, never while tracing it.

`select_conv_policy()` reads the environment once (JAX backend, the XLA:CPU convolution engine
that XLA_FLAGS selects, the device count, whether the C++ kernels of `senet_jax.ops.kernels`
can be built) into a frozen `ConvPolicy`. `models.builder.build_model` and `create_model`
build one and hand it to the model (`conv_policy` field), whose `Conv2d` layers call
`ConvPolicy.choose`: a pure function of the policy, the requested `conv_impl`, the kernel
shape, the groups and the input's spatial size. Tracing a model therefore never compiles C++
or reads XLA_FLAGS, and the same policy gives the same program wherever it is traced.

The C++ kernels are used only in a one-device process (`kernels` is False on N devices): under
`jax.jit` with a sharded batch, XLA's SPMD partitioner cannot split a custom call, so it would
gather the whole batch onto every device and run the kernel there N times. On N CPU devices the
policy therefore picks the XLA formulations of the same convolutions ('split' for grouped
ones, XLA's weight gradient for 'shift'); they compute the same function (tests compare them).
"""
from __future__ import annotations

import dataclasses

import numpy as np

IMPLS = ('auto', 'xla', 'shift', 'dense', 'split', 'direct', 'matmul', 'im2col', 'im2col_grad')
ENGINES = ('eigen', 'ynn')
# 'direct' beats 'split' for groups of <= 8 input channels (its expanded-rows form) and for
# groups of a multiple of 8 output channels (its broadcast form; `Geometry::broadcast()` in
# senet_jax/ops/kernels/grouped_cpu.cc): all of ResNeXt-50 32x4d's 3x3 convs. Other shapes (e.g. 12
# in / 12 out) would need expanded rows that outgrow the cache.
DIRECT_MAX_EXPANDED_WIDTH = 8
DIRECT_BROADCAST_MULTIPLE = 8
_UNBOUNDED = (1 << 15, 1 << 15)


@dataclasses.dataclass(frozen=True)
class ConvPolicy:
  """Facts about where a model runs that decide how its convolutions are computed.

  Attributes:
    backend: JAX backend ('cpu', 'gpu', 'tpu'); any other value (the default 'any') means
      unknown: 'auto' then means XLA's own convolution everywhere, correct on every backend.
    engine: XLA:CPU's convolution engine, 'eigen' or 'ynn' (`utils.xla_flags.cpu_conv_engine`).
    kernels: whether the C++ kernels may be called (CPU, built, one device).
  """
  backend: str = 'any'
  engine: str = 'eigen'
  kernels: bool = False

  def __post_init__(self):
    if self.engine not in ENGINES:
      raise ValueError(f'ConvPolicy.engine={self.engine!r} is not valid; allowed: {ENGINES}')

  def describe(self) -> str:
    """One line for the log, e.g. 'cpu, eigen convolutions, C++ kernels on'."""
    if self.backend != 'cpu':
      return f'{self.backend}, XLA convolutions'
    return f'cpu, {self.engine} convolutions, C++ kernels {"on" if self.kernels else "off"}'

  def kernels_apply(self, *dtypes) -> bool:
    """Whether the C++ kernels run for operands of `dtypes` (they are float32 only)."""
    return self.kernels and all(np.dtype(d) == np.float32 for d in dtypes)

  def choose(self, impl: str, kernel_shape, groups: int, spatial=_UNBOUNDED) -> str:
    """The concrete formulation of one convolution ('auto' resolved; explicit ones checked).

    Args:
      impl: the requested formulation, one of `IMPLS`.
      kernel_shape: the HWIO kernel shape (kh, kw, in_channels // groups, out_channels).
      groups: feature groups.
      spatial: (height, width) of the input.
    """
    check_impl(impl)
    kh, kw, cin_g, cout = kernel_shape
    in_channels, area = cin_g * groups, kh * kw
    on_cpu = self.backend == 'cpu'
    if groups == 1:
      if area == 1 and (impl == 'matmul' or (impl == 'auto' and on_cpu)):
        return 'matmul'
      if impl in ('im2col', 'im2col_grad'):
        return impl
      if impl == 'auto' and on_cpu and area > 1:
        return _auto_dense_cpu(in_channels, area, min(spatial) ** 2, self.engine)
      return 'xla'
    if impl == 'auto':
      return _auto_grouped(on_cpu, groups, in_channels, cout)
    if impl == 'matmul':
      raise ValueError(f"conv_impl='matmul' needs a dense 1x1 conv, got groups={groups}")
    if impl in ('im2col', 'im2col_grad'):
      raise ValueError(f"conv_impl={impl!r} needs a dense conv, got groups={groups}")
    if impl == 'shift' and groups != in_channels:
      raise ValueError(f"conv_impl='shift' needs a depthwise conv (groups == in_channels), got "
                       f'groups={groups} with {in_channels} input channels')
    return impl


def check_impl(impl: str) -> None:
  """Raises ValueError naming `conv_impl` when `impl` is not one of `IMPLS`."""
  if impl not in IMPLS:
    raise ValueError(f'conv_impl={impl!r} is not valid; allowed values: {list(IMPLS)}')


def _auto_grouped(on_cpu: bool, groups: int, in_channels: int, out_channels: int) -> str:
  """'auto' for a grouped / depthwise conv: XLA off CPU; on CPU 'shift' for depthwise, else
  'direct' for the group shapes its kernels handle well, 'split' for the rest."""
  if not on_cpu:
    return 'xla'
  if groups == in_channels:
    return 'shift'
  if (in_channels // groups <= DIRECT_MAX_EXPANDED_WIDTH
      or (out_channels // groups) % DIRECT_BROADCAST_MULTIPLE == 0):
    return 'direct'
  return 'split'


def _auto_dense_cpu(in_channels: int, kernel_area: int, spatial: int, engine: str) -> str:
  """The fastest formulation of a dense kxk conv on XLA:CPU with convolution `engine`.

  Both engines leave their fast path on maps no larger than the kernel (a 3x3 conv on the 2x2
  maps of the last ResNet stage at 64 px: 500+ ms vs 5 ms as im2col). Elsewhere Eigen's
  convolution beats every reformulation, forward and backward (ResNet-50 shapes, ms fwd /
  fwd+bwd, XLA vs im2col_grad: 7x7 stem 20.8/54.5 vs 21.3/100, 56x56x64 13.7/50 vs 13.5/85,
  28x28x128 12.2/41 vs 11.4/54). YNNPACK's convolutions are slower, and weight gradients
  much slower, so with it more shapes go to im2col."""
  if spatial <= kernel_area:
    return 'im2col'
  if engine == 'eigen':
    return 'xla'
  # YNNPACK: 3x3 stems (3 channels) are faster as one K=27 matmul; 7x7 stems are not
  # (forward 52 vs 25 ms at 224x16) and take 'im2col_grad'.
  if in_channels <= 4 and kernel_area <= 9:
    return 'im2col'
  return 'im2col_grad' if _im2col_grad_is_faster(in_channels, spatial) else 'xla'


def _im2col_grad_is_faster(in_channels: int, spatial: int) -> bool:
  """XLA:CPU 3x3 conv fwd + bwd, XLA vs im2col weight gradient (ms, batch 16 at 224 / 64 at
  64 px): 56x56x64 144 vs 90, 28x28x128 79 vs 60, 16x16x64 49 vs 29, 7x7x512 48 vs 44; but
  8x8x128 14.0 vs 17.8 and 14x14x256 42 vs 45."""
  return in_channels <= 64 or spatial <= 49 or (in_channels <= 128 and spatial >= 28 * 28)


def select_conv_policy(*, backend: str | None = None, engine: str | None = None,
                       device_count: int | None = None,
                       kernels_available: bool | None = None) -> ConvPolicy:
  """The policy for this process; every argument left None is read from the environment.

  This is the only place the formulation choice reads the environment. The C++ kernels are
  built (or loaded from their cache) only when they can be used: CPU backend, one device.
  """
  import jax
  backend = backend or jax.default_backend()
  if engine is None:
    from senet_jax.utils.xla_flags import cpu_conv_engine
    engine = cpu_conv_engine()
  usable = backend == 'cpu' and (device_count or jax.device_count()) == 1
  if usable and kernels_available is None:
    from senet_jax.ops import kernels
    kernels_available = kernels.available()
  return ConvPolicy(backend=backend, engine=engine, kernels=bool(usable and kernels_available))
