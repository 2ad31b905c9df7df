"""What a checkpoint holds besides its arrays: the run record (`record.py`).

The orbax Checkpointer itself is still `senet_jax.training.checkpoint` (issue 32's map moves it
here later).
"""
