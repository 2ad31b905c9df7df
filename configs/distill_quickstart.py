"""Distillation on digits: a quarter-width quickstart student taught by the quickstart model.

    make quickstart   # the teacher, in workdir/quickstart
    python main.py --config=configs/distill_quickstart.py --workdir=workdir/distilled
    # the same student without the teacher: add --config.distill.teacher=''
"""
import ml_collections

from senet_jax.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  """Student: quickstart recipe, widths (8, 16, 16, 32), 3 epochs; teacher: quickstart."""
  config = quickstart.get_config()
  teacher_kwargs = dict(config.model_kwargs)
  config.model_kwargs.update(dict(stage_planes=(8, 16, 16, 32), stem_width=8))
  config.num_epochs = 3.0
  config.eval_every_epochs = 3.0
  config.distill.update(dict(teacher='workdir/quickstart', model=config.model,
                             model_kwargs=teacher_kwargs, temperature=4.0, alpha=0.5))
  return config
