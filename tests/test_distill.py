"""Knowledge distillation: the loss against hand computation, teacher input, trainer hook."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from senet_jax.models import builder, create_model
from senet_jax.training import checkpoint as ckpt_lib
from senet_jax.training import distill
from senet_jax.training.validate import ConfigError
from test_train import tiny_config


def _softmax(z):
  e = [math.exp(v) for v in z]
  return [v / sum(e) for v in e]


def test_loss_matches_hand_computation_with_t_squared_scaling():
  s, t, label, T, alpha = [1.0, 2.0, 0.0], [0.5, 2.5, -1.0], 1, 2.0, 0.3
  ce = -math.log(_softmax(s)[label])
  ps, pt = _softmax([v / T for v in s]), _softmax([v / T for v in t])
  kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
  expected = (1 - alpha) * ce + alpha * T * T * kl
  got = distill.distillation_loss(jnp.asarray([s]), jnp.asarray([t]), jnp.asarray([ce]),
                                  T, alpha)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  # Hinton et al. eq. 2: d(T^2 KL)/ds_i = T (p_i - q_i) at temperature T.
  grad = jax.grad(lambda z: distill.distillation_loss(z, jnp.asarray(t), 0.0, T, 1.0))(
      jnp.asarray(s))
  np.testing.assert_allclose(grad, [T * (p - q) for p, q in zip(ps, pt)], rtol=1e-5)


def test_teacher_input_is_renormalised_and_resized():
  module = create_model('se_resnet18', num_classes=3)
  teacher = distill.Teacher(module, {}, image_size=8, mean_rgb=(127.5,) * 3,
                            std_rgb=(127.5,) * 3, interpolation='bilinear')
  pixels = np.full((1, 4, 4, 3), 204.0, np.float32)
  student_mean, student_std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
  x = (pixels - np.float32(student_mean)) / np.float32(student_std)
  out = teacher.prepare(jnp.asarray(x), student_mean, student_std)
  assert out.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(out, (204.0 - 127.5) / 127.5, rtol=1e-5)


def test_bad_distill_config_names_the_field(digits_dir):
  config = tiny_config(digits_dir)
  config.distill.teacher = '/nonexistent/teacher'
  with pytest.raises(ConfigError, match='config.distill.model'):
    distill.load_teacher(config, None, builder.build_model, ckpt_lib.load_params)
  config.distill.model = 'se_resnet18'
  with pytest.raises(ConfigError, match='config.distill.teacher'):
    distill.load_teacher(config, None, builder.build_model, ckpt_lib.load_params)
  config.distill.alpha = 1.5
  with pytest.raises(ConfigError, match='config.distill.alpha'):
    distill.load_teacher(config, None, builder.build_model, ckpt_lib.load_params)


@pytest.mark.slow  # two short runs (minutes on 2 loaded cores)
def test_trainer_distils_from_a_checkpoint_at_its_own_resolution(digits_dir, tmp_path):
  teacher_dir = str(tmp_path / 'teacher')
  teacher_config = tiny_config(digits_dir, num_train_steps=2, image_size=40)
  train.train_and_evaluate(teacher_config, teacher_dir)
  teacher_before = ckpt_lib.load_params(teacher_dir)
  config = tiny_config(digits_dir, num_train_steps=2, ema_decay=0.9)
  config.distill.update(dict(teacher=teacher_dir, model=config.model, image_size=40,
                             model_kwargs=dict(config.model_kwargs), alpha=0.7))
  results = train.train_and_evaluate(config, str(tmp_path / 'student'))
  assert results['num_examples'] == 359
  for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(
      ckpt_lib.load_params(teacher_dir))):
    np.testing.assert_array_equal(a, b)  # the teacher is read, never trained or rewritten


def test_imagenet_config_distils_the_converted_se_resnext101_into_se_resnet18():
  import os
  from senet_jax.convert import timm as timm_convert
  from test_configs import ROOT, load_config
  config = load_config(os.path.join(ROOT, 'configs', 'distill_se_resnext101_to_se_resnet18.py'))
  assert config.model == 'se_resnet18'
  # The teacher is built exactly as the converter builds legacy_seresnext101_32x4d.
  assert (config.distill.model, dict(config.distill.model_kwargs)) == timm_convert.MODELS[
      'legacy_seresnext101_32x4d']
  prep = timm_convert.preprocessing('legacy_seresnext101_32x4d')
  assert (config.distill.image_size, config.distill.interpolation) == (prep.image_size,
                                                                       prep.interpolation)
  np.testing.assert_allclose(config.distill.mean_rgb, prep.mean_rgb)
  np.testing.assert_allclose(config.distill.std_rgb, prep.std_rgb)
