"""Import + first batch of a training process on the Grain backend, from interpreter launch.

The steps main.py and the trainer take before the first step, in order: import the trainer,
main's TensorFlow step (an import hook now; importing TF to hide accelerators before), the
TensorBoard writer, the training source, the Grain iterator and its first batch. Prints the
elapsed time at each mark, whether TensorFlow was loaded, and the process's CPU seconds
(user + sys: less sensitive than wall time to a loaded machine).

    T0=$(date +%s.%N); python benchmarks/first_batch.py --data_dir=/tmp/tfds --t0=$T0

Run it from a checkout's root (it imports that checkout's senet_jax and configs); the digits
dataset is built in --data_dir first if missing (without TensorFlow since issue 33; run once).
"""
import argparse
import os
import sys
import tempfile
import time


def main() -> None:
  """Times the start of a grain training process (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data_dir', required=True)
  p.add_argument('--t0', type=float, default=None, help='time.time() before python started')
  args = p.parse_args()
  t0 = args.t0 if args.t0 is not None else time.time()
  sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), 'tests', 'helpers')]
  marks = []
  from senet_jax.data import pipeline
  from senet_jax.training import progress, trainer  # noqa: F401 (what main.py imports)
  marks.append(('import trainer', time.time() - t0))
  from senet_jax import main as main_module
  if hasattr(main_module, '_hide_accelerators_from_tensorflow'):  # before issue 33's change
    main_module._hide_accelerators_from_tensorflow()
  else:
    from senet_jax.utils import tf_host
    tf_host.hide_accelerators_on_import()
  marks.append(('main: hide accelerators', time.time() - t0))
  import tiny_config
  config = tiny_config.get_config()
  config.update(dict(data_dir=args.data_dir, input_backend='grain'))
  with tempfile.TemporaryDirectory() as workdir:
    writer = progress.create_writer(workdir, config)
    marks.append(('TensorBoard writer', time.time() - t0))
    source = pipeline.open_source(config.dataset, config.train_split, config.data_dir)
    next(pipeline.make_train_iterator(config, source))
    marks.append(('first batch', time.time() - t0))
    writer.close()
  cpu = sum(os.times()[:2])
  print(' | '.join(f'{what} {t:.1f} s' for what, t in marks),
        f"| TensorFlow loaded: {'tensorflow' in sys.modules} | CPU {cpu:.1f} s")


if __name__ == '__main__':
  main()
