"""Progressive learning: the paper's interpolation, stage switches, exact mid-stage resume."""
import os

import jax
import numpy as np
import pytest

import train
from senet_jax.data import pipeline
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import preemption, progressive
from senet_jax.training.validate import ConfigError
from test_train import tiny_config


def test_schedule_is_the_papers_linear_interpolation():
  # V2-S settings (paper Table 6) over 4 stages of 100 steps: S_i = S_0 + (S_e - S_0) * i / 3.
  stages = progressive.build_schedule(400, 4, (128, 300), (0.1, 0.3), (5, 15), (0.0, 0.0))
  assert [(s.start_step, s.end_step) for s in stages] == [(0, 100), (100, 200), (200, 300),
                                                          (300, 400)]
  # 185.3 and 242.7 rounded to multiples of 8; the endpoints as given.
  assert [s.image_size for s in stages] == [128, 184, 240, 300]
  assert [s.dropout_rate for s in stages] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3,
                                                            0.3])
  assert [s.randaugment_magnitude for s in stages] == pytest.approx([5, 25 / 3, 35 / 3, 15])
  assert [s.mixup_alpha for s in stages] == [0.0] * 4
  # Uneven split: stage boundaries at floor(i * T / M).
  stages = progressive.build_schedule(10, 3, (32, 64), (0, 0), (0, 0), (0.0, 0.2))
  assert [s.start_step for s in stages] == [0, 3, 6]
  assert [s.image_size for s in stages] == [32, 48, 64]
  assert [progressive.stage_at(stages, k).index for k in range(10)] == [0] * 3 + [1] * 3 + [2] * 4


def _progressive(config, **overrides):
  config.progressive.update(dict(num_stages=3, image_size=(32, 48), dropout_rate=(0.0, 0.2),
                                 randaugment_magnitude=(2.0, 6.0), mixup_alpha=(0.0, 0.4),
                                 **overrides))
  config.augment = 'randaugment'
  return config


def test_pipeline_switches_at_stage_boundaries_and_resumes_inside_a_stage(digits_dir):
  config = _progressive(tiny_config(digits_dir, batch_size=8))
  config.augment = 'none'  # tracing RandAugment per pipeline is slow; the trainer test uses it
  source = pipeline.open_source(config.dataset, config.train_split, digits_dir)
  stages = progressive.build_schedule(6, 3, (32, 48), (0.0, 0.2), (2.0, 6.0), (0.0, 0.4))
  made = []

  def make(cfg, start):
    made.append((start, cfg.image_size, cfg.randaugment_magnitude, cfg.mixup_alpha))
    return pipeline.TrainIterator(cfg, source, start_step=start)

  straight = [next(it) for it in [progressive.StagedIterator(stages, config, make)] * 6]
  assert made == [(0, 32, 2.0, 0.0), (2, 40, 4.0, pytest.approx(0.2)), (4, 48, 6.0, 0.4)]
  assert [b['image'].shape[1:3] for b in straight] == [(32, 32)] * 2 + [(40, 40)] * 2 + [
      (48, 48)] * 2
  assert [b['label'].ndim for b in straight] == [1, 1, 2, 2, 2, 2]  # mixup from stage 2 on
  resumed_iter = progressive.StagedIterator(stages, config, make, start_step=3)
  for expected in straight[3:]:
    got = next(resumed_iter)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.slow  # three short runs, three compiled steps each (minutes on 2 cores)
def test_trainer_resumed_mid_stage_matches_uninterrupted(digits_dir, tmp_path, monkeypatch,
                                                         caplog):
  caplog.set_level('INFO')
  config = _progressive(tiny_config(digits_dir, ema_decay=0.9, checkpoint_every_steps=2))
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)
  for k, size in ((1, 32), (2, 40), (3, 48)):
    assert f'progressive stage {k}/3 at step {2 * k - 2}: image {size}' in caplog.text
  interrupted = str(tmp_path / 'interrupted')
  monkeypatch.setattr(preemption.PreemptionWatcher, 'should_stop', lambda self, step: step == 3)
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config, interrupted)
  monkeypatch.undo()
  caplog.clear()
  train.train_and_evaluate(config, interrupted)
  assert 'progressive stage 2/3 at step 3: image 40' in caplog.text  # resumed inside stage 2
  a, b = ckpt_lib.load_params(straight), ckpt_lib.load_params(interrupted)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise on CPU


def test_dropout_follows_the_stage():
  stages = progressive.build_schedule(4, 2, (32, 32), (0.1, 0.5), (0, 0), (0, 0))
  from senet_jax.models import create_model
  model = create_model('efficientnetv2_b0', num_classes=3)
  built = []
  steps = progressive.StepPerStage(stages, lambda s: built.append(
      progressive.stage_model(model, s).dropout_rate) or len(built))
  assert [steps.for_step(k) for k in range(4)] == [1, 1, 2, 2]  # one step function per stage
  assert built == [0.1, 0.5]


@pytest.mark.parametrize('field,value,message', [
    ('image_size', (16, 64), 'config.progressive.image_size'),
    ('dropout_rate', (0.1,), 'config.progressive.dropout_rate'),
    ('num_stages', 100, 'config.progressive.num_stages'),
])
def test_bad_progressive_config_names_the_field(digits_dir, field, value, message):
  config = _progressive(tiny_config(digits_dir))
  config.progressive[field] = value
  with pytest.raises(ConfigError, match=message):
    progressive.schedule_from_config(config, 6)


@pytest.mark.parametrize('variant,size,randaug,mixup,dropout', [
    ('s', (128, 300), (5, 15), (0, 0), (0.1, 0.3)),    # paper Table 6
    ('m', (128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
    ('l', (128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
])
def test_v2_configs_carry_the_papers_progressive_recipe(variant, size, randaug, mixup, dropout):
  from test_configs import ROOT, load_config
  config = load_config(os.path.join(ROOT, 'configs', f'efficientnetv2_{variant}.py'))
  assert (config.num_epochs, config.progressive.num_stages, config.augment) == (
      350.0, 4, 'randaugment')
  assert config.image_size == {'s': 384, 'm': 480, 'l': 480}[variant]  # evaluation size
  stages = progressive.schedule_from_config(config, total_steps=350 * 312)
  first, last = stages[0], stages[-1]
  assert (first.image_size, last.image_size) == size
  assert (first.randaugment_magnitude, last.randaugment_magnitude) == randaug
  assert (first.mixup_alpha, last.mixup_alpha) == mixup
  assert (first.dropout_rate, last.dropout_rate) == dropout
