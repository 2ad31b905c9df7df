"""How a convolution or pool is computed on each backend, kept out of the model definitions.

`conv_impls`: interchangeable formulations of grouped / depthwise / 1x1 convolutions;
`kernels`: the C++ XLA FFI kernels some of them use on CPU; `pooling`: max pool with the
hand-written gradient XLA:CPU needs. Models reach these only through `layers.Conv2d` and
`layers.max_pool`.
"""
