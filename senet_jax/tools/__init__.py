"""The command-line tools, one module each with its library functions and its `main()`.

`python -m senet_jax.tools.<tool>` and the console script `senet-<tool>` are the same program:
cam, excitation, predict, evaluate (`senet-validate` / `senet-evaluate`: timm's validate.py),
sweep, summary, complexity. They share one command-line convention (`senet_jax.utils.cli`) and
sit at the top of the package: nothing else in `senet_jax` imports them. Importing this package
imports none of them.

The old paths (`python -m senet_jax.validate`, `senet_jax.cam`, ...) still work for one release:
each re-exports its tool and, run with `python -m`, says where the tool moved.
"""
