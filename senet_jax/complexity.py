"""`python -m senet_jax.complexity`: see senet_jax.analysis.complexity."""
from senet_jax.analysis.complexity import main

if __name__ == '__main__':
  main()
