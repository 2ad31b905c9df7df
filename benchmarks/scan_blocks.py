r"""Would scanning a stage's identical blocks cut the compile? EfficientNet-B0 both ways.

    python benchmarks/scan_blocks.py base 224 16
    python benchmarks/scan_blocks.py scan 224 16

Issue 37 suggested tracing each stage's repeated blocks once (`nn.scan`) to cut the cold
compile. `scan` runs the same network with blocks 2.. of every stage under `nn.scan` (stacked
parameters; the forward pass below is `EfficientNet.__call__` with only that loop changed,
head without its feature tap and dropout, drop path off in both variants), `base` the
registered model; both get `create_model`'s convolution policy, and both run the step
`make bench` times. Prints tracing, lowering and XLA seconds, and the median of 3 steps.
A measurement, not a model: the answer (docs/speed.md, "Compile time") was no.
"""
import dataclasses
import functools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
from senet_jax.utils import allocator, xla_flags  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402  (beside this file)
from senet_jax.models import create_model, layers  # noqa: E402
from senet_jax.models import efficientnet as E  # noqa: E402


class ScanBody(nn.Module):
  """One block as a scan body: (carry, _) -> (carry, None)."""
  make: object
  train: bool

  @nn.compact
  def __call__(self, x, _):
    return self.make(name='block')(x, self.train), None


class ScannedB0(E.EfficientNet):
  """EfficientNet with blocks 2.. of each stage under nn.scan (the SE of block 2 for all)."""

  @nn.compact
  def __call__(self, x, train=False):
    act, conv, norm, bn = self.layer_constructors(train)  # the model's own
    stages = self.stage_args()
    x = act(bn(name='bn_stem')(conv(stages[0].in_channels, 3, 2, name='conv_stem')(x)))
    for s, args in enumerate(stages):
      block = E.FusedMBConv if args.fused else E.MBConv
      def make(b, in_channels):
        return functools.partial(block, in_channels, args.out_channels, args.kernel_size,
                                 args.stride if b == 0 else 1, args.expand_ratio,
                                 se_layer=self._attn(E.FIRST_STAGE + s, b + 1, args,
                                                     in_channels, conv, norm, train),
                                 drop_path_rate=0.0, conv=conv, norm=norm, act=act)
      x = make(0, args.in_channels)(name=f'blocks_{s}_0')(x, train)
      if args.repeats > 1:
        scanned = nn.scan(ScanBody, variable_axes={'params': 0, 'batch_stats': 0},
                          split_rngs={'params': True, 'dropout': True}, length=args.repeats - 1)
        x, _ = scanned(make(1, args.out_channels), train, name=f'blocks_{s}_rest')(x, None)
    x = conv(self.round_channels(self.head_channels), 1, 1, name='conv_head')(x)
    x = act(bn(name='bn_head')(x))
    x = layers.global_avg_pool(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name='classifier')(x)


def main(variant, steps=3, res=224, b=16):
  """Compiles and times the training step of one variant; prints one line."""
  m = create_model('efficientnet_b0', drop_path_rate=0.0, dropout_rate=0.0)
  if variant == 'scan':
    m = ScannedB0(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)
                     if f.name not in ('parent', 'name')})
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(b, res, res, 3).astype(np.float32))
  y = jnp.asarray(rng.randint(0, 1000, b))
  v = jax.jit(m.init)(jax.random.key(0), x[:1])
  step, opt = train_step.sgd_training_step(m)
  args = [v['params'], v['batch_stats'], opt.init(v['params']), x, y, jax.random.key(1)]
  t = time.perf_counter()
  tr = jax.jit(step, donate_argnums=(0, 1, 2)).trace(*args)
  t1 = time.perf_counter()
  lowered = tr.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  times = []
  for _ in range(steps + 2):  # the first two are warm-ups
    s0 = time.perf_counter()
    params, stats, opt_state, loss = compiled(*args)
    loss.block_until_ready()
    times.append(time.perf_counter() - s0)
    args = [params, stats, opt_state, x, y, args[5]]
  n = sum(l.size for l in jax.tree.leaves(v['params']))
  print(f'{variant}: params {n} leaves {len(jax.tree.leaves(v["params"]))} trace {t1 - t:.2f} '
        f'lower {t2 - t1:.2f} xla {t3 - t2:.2f} total {t3 - t:.2f} '
        f'step {np.median(times[2:]):.3f} loss {float(loss):.4f}', flush=True)


if __name__ == '__main__':
  allocator.reexec_with_jemalloc()  # make bench's allocator and XLA flags
  xla_flags.configure_xla_cpu()
  variant, res, batch = (sys.argv[1:] + ['scan', '224', '16'][len(sys.argv) - 1:])[:3]
  if variant not in ('base', 'scan'):
    sys.exit(f'scan_blocks.py: variant {variant!r}: expected base or scan')
  main(variant, res=int(res), b=int(batch))
