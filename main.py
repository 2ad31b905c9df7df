r"""Train and evaluate a senet_jax model: `python main.py` in a checkout, `senet-train` once the
package is installed. The same program: senet_jax/main.py (its docstring, and `--help`, list the
flags and the exit codes).

    python main.py --config=configs/quickstart.py --workdir=workdir/quickstart
    python main.py --config=configs/efficientnet_b3.py --workdir=/tmp/b3 \
        --config.batch_size=1024 --config.data_dir=/data/tfds
"""

if __name__ == '__main__':
  from senet_jax import main
  main.run()
