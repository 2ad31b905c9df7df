"""How a convolution or pool is computed on each backend, kept out of the model definitions.

`policy`: the `ConvPolicy` (backend, XLA:CPU convolution engine, C++ kernels usable) decided
once per model by `select_conv_policy()`; `conv_impls`: interchangeable formulations of grouped /
depthwise / 1x1 convolutions; `kernels`: the C++ XLA FFI kernels some of them use on CPU;
`pooling`: max pool with the hand-written gradient XLA:CPU needs. Models reach these only
through `layers.Conv2d` (which takes the policy) and `layers.max_pool`.
"""
from senet_jax.ops.policy import IMPLS, ConvPolicy, select_conv_policy

__all__ = ['IMPLS', 'ConvPolicy', 'select_conv_policy']
