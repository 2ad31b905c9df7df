r"""Fine-tune a senet_jax model with a plain Flax NNX loop on the offline digits dataset.

    python examples/nnx_finetune.py                                 # quickstart SE-ResNet, fresh
    python examples/nnx_finetune.py --init_from=workdir/quickstart  # from `make quickstart`
    python examples/nnx_finetune.py --output=/tmp/nnx_digits        # then, e.g.:
    python main.py --config=configs/quickstart.py --workdir=/tmp/ev --mode=eval \
        --config.init_from=/tmp/nnx_digits

The model is an `nnx.Module` (`senet_jax.nnx`); the loop is NNX's own: `nnx.Optimizer(...,
wrt=nnx.Param)`, `nnx.value_and_grad`, `nnx.jit`, `model.train()` / `model.eval()`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from senet_jax import nnx as senet_nnx  # noqa: E402
from senet_jax.data import digits  # noqa: E402

# The network of configs/quickstart.py and the way its digits are preprocessed.
QUICKSTART = dict(stage_sizes=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128), stem_width=16,
                  se_reduction=8.0, layout='v1.5')
PREPROCESSING = {'image_size': 32, 'eval_crop_fraction': 1.0, 'interpolation': 'bilinear',
                 'mean_rgb': [123.675, 116.28, 103.53], 'std_rgb': [58.395, 57.12, 57.375]}


def load_digits(size: int = 32):
  """((train images, labels), (test images, labels)): normalised float32 NHWC, int labels."""
  images, labels = digits.load_images(size)
  train, test = digits.stratified_split(labels)
  mean, std = np.float32(PREPROCESSING['mean_rgb']), np.float32(PREPROCESSING['std_rgb'])
  images = (images.astype(np.float32) - mean) / std
  return (images[train], labels[train]), (images[test], labels[test])


def loss_fn(model, images, labels):
  """Mean cross-entropy of the model's logits."""
  logits = model(images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model, optimizer, images, labels):
  """One Adam step; BatchNorm statistics update inside the model (training mode)."""
  loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def predict(model, images):
  """Predicted classes (call in eval mode)."""
  return model(images).argmax(-1)


def batches(data, batch_size: int, seed: int = 0):
  """Endless random batches of (images, labels)."""
  rng = np.random.default_rng(seed)
  while True:
    index = rng.choice(len(data[1]), batch_size, replace=False)
    yield data[0][index], data[1][index]


def finetune(model, data, steps: int, learning_rate: float = 1e-3, log_every: int = 0):
  """Trains `model` in place for `steps` batches from `data`; returns the losses."""
  model.train()
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
  losses = []
  for step, (images, labels) in zip(range(steps), data):
    losses.append(float(train_step(model, optimizer, images, labels)))
    if log_every and (step + 1) % log_every == 0:
      print(f'step {step + 1}: loss {np.mean(losses[-log_every:]):.3f}')
  return losses


def accuracy(model, data, batch_size: int = 120) -> float:
  """Top-1 accuracy on (images, labels), in eval mode."""
  model.eval()
  hits = sum(int((np.asarray(predict(model, data[0][i:i + batch_size]))
                  == data[1][i:i + batch_size]).sum())
             for i in range(0, len(data[1]), batch_size))
  return hits / len(data[1])


def main(argv=None) -> int:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--init_from', default='', help='a main.py workdir or converter output')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--learning_rate', type=float, default=1e-3)
  p.add_argument('--output', default='', help='write the fine-tuned checkpoint here')
  args = p.parse_args(argv)
  if args.init_from:
    model = senet_nnx.from_checkpoint(args.init_from, rngs=nnx.Rngs(0))
  else:
    model = senet_nnx.create_model('se_resnet18', num_classes=10, input_size=32,
                                   rngs=nnx.Rngs(0), **QUICKSTART)
  train, test = load_digits(32)
  finetune(model, batches(train, args.batch_size), args.steps, args.learning_rate, 50)
  print(f'test accuracy: {accuracy(model, test):.3f}')
  if args.output:
    print('wrote', senet_nnx.save_checkpoint(model, args.output, preprocessing=PREPROCESSING))
  return 0


if __name__ == '__main__':
  sys.exit(main())
