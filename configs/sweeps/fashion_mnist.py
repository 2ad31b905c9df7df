"""The SE paper's ablations on Fashion-MNIST: one variant per ablation, on configs/fashion_mnist.py.

    python -m senet_jax.tools.sweep --config=configs/sweeps/fashion_mnist.py:se_gate \
        --workdir=workdir/fashion_ablations/se_gate --seeds=0,1,2
    python benchmarks/ablation_table.py --run --workdir=workdir/fashion_ablations --seeds=0,1,2

The second command runs every ablation below with the seeds, writes one CSV per ablation under
benchmarks/results/ and regenerates the table in docs/evidence.md. The base network (every
point changes one field of it) is configs/fashion_mnist.py's narrow SE-ResNet: SE in stages
2-4, r = 4, average squeeze, sigmoid gate, standard position. Its three stages are the paper's
stages 2..4, so the stage ablation has no stage 5. The points are the digits/ImageNet sweeps'
own where those fit (one definition of each ablation).
"""
from senet_jax.configs import fashion_mnist
from senet_jax.configs.sweeps import se_gate, se_integration, se_reduction_ratio, se_squeeze

ABLATIONS = {
    'se': [{'model_kwargs.se': s} for s in (True, False)],
    'se_reduction': se_reduction_ratio.get_sweep(),   # r = 2, 4, 8, 16, 32
    'se_squeeze': se_squeeze.get_sweep(),             # avg, max, none (NoSqueeze)
    'se_gate': se_gate.get_sweep(),                   # sigmoid, tanh, relu
    'se_stages': [{'model_kwargs.se_stages': s} for s in ((2,), (3,), (4,), (2, 3, 4))],
    'se_position': se_integration.get_sweep(),        # standard, pre, post, identity, after_3x3
}


def _check(variant: str) -> None:
  if variant not in ABLATIONS:
    raise ValueError(f'configs/sweeps/fashion_mnist.py variant {variant!r}: expected one of '
                     f'{sorted(ABLATIONS)}')


def get_config(variant: str = 'se'):
  """The ablation base of configs/fashion_mnist.py (the same for every ablation)."""
  _check(variant)
  return fashion_mnist.get_config()


def get_sweep(variant: str = 'se'):
  """The points of ablation `variant`: {dotted config field: value}."""
  _check(variant)
  return [dict(point) for point in ABLATIONS[variant]]
