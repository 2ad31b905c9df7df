"""Schedules, TF-semantics RMSProp, weight-decay masks and metrics against hand computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from senet_jax.training import optim, steps


def config(**kw):
  c = default.get_config()
  c.update(kw)
  return c


def test_learning_rate_scales_with_batch():
  assert optim.scaled_learning_rate(0.016, 4096) == pytest.approx(0.256)
  with pytest.raises(ValueError, match='learning_rate'):
    optim.scaled_learning_rate(-0.1, 256)


def test_cosine_schedule_with_warmup_by_hand():
  c = config(learning_rate=0.1, batch_size=512, lr_schedule='cosine', warmup_epochs=2.0)
  sched = optim.create_schedule(c, steps_per_epoch=10, total_steps=120)
  peak = 0.2
  assert float(sched(0)) == pytest.approx(0.0)
  assert float(sched(10)) == pytest.approx(peak / 2)          # half way through warmup
  assert float(sched(20)) == pytest.approx(peak)              # end of warmup
  assert float(sched(70)) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 50 / 100)))
  assert float(sched(120)) == pytest.approx(0.0, abs=1e-7)


def test_efficientnet_staircase_exponential_by_hand():
  # 0.016 * 4096 / 256 = 0.256; x0.97 every 2.4 epochs counted from step 0; 5 warmup epochs.
  c = config(learning_rate=0.016, batch_size=4096, lr_schedule='exponential',
             warmup_epochs=5.0, lr_decay_epochs=2.4, lr_decay_factor=0.97)
  spe = 100
  sched = optim.create_schedule(c, steps_per_epoch=spe, total_steps=350 * spe)
  assert float(sched(250)) == pytest.approx(0.256 * 250 / 500)
  assert float(sched(500)) == pytest.approx(0.256 * 0.97 ** 2)   # floor(500 / 240) = 2
  assert float(sched(719)) == pytest.approx(0.256 * 0.97 ** 2)
  assert float(sched(720)) == pytest.approx(0.256 * 0.97 ** 3)
  assert float(sched(10_000)) == pytest.approx(0.256 * 0.97 ** 41, rel=1e-5)


def test_step_schedule_divides_by_ten():
  c = config(learning_rate=0.1, batch_size=256, lr_schedule='step', warmup_epochs=0.0,
             lr_step_epochs=(3, 6))
  sched = optim.create_schedule(c, steps_per_epoch=10, total_steps=100)
  assert [round(float(sched(s)), 6) for s in (0, 29, 30, 59, 60)] == [0.1, 0.1, 0.01, 0.01,
                                                                       0.001]


def test_linear_schedule_decays_to_zero_after_warmup():
  c = config(learning_rate=0.5, batch_size=1024, lr_schedule='linear', warmup_epochs=1.0)
  sched = optim.create_schedule(c, steps_per_epoch=10, total_steps=110)
  # peak 0.5 * 1024 / 256 = 2.0 at step 10, then down by 2.0 / 100 per step.
  assert [round(float(sched(s)), 6) for s in (0, 5, 10, 60, 110)] == [0.0, 1.0, 2.0, 1.0, 0.0]


def test_rmsprop_tf_two_steps_by_hand():
  lr = lambda count: jnp.where(count == 0, 0.1, 0.05)  # the rate changes between steps
  opt = optim.rmsprop_tf(lr, decay=0.9, epsilon=1e-3, momentum=0.9)
  w = {'w': jnp.array([1.0, -2.0])}
  state = opt.init(w)
  g1, g2 = np.array([0.5, -1.0]), np.array([0.2, 0.4])
  # TF1: ms starts at 1; mom = 0.9 mom + lr * g / sqrt(ms + eps); w -= mom.
  ms1 = 0.9 * 1.0 + 0.1 * g1 ** 2
  mom1 = 0.1 * g1 / np.sqrt(ms1 + 1e-3)
  ms2 = 0.9 * ms1 + 0.1 * g2 ** 2
  mom2 = 0.9 * mom1 + 0.05 * g2 / np.sqrt(ms2 + 1e-3)
  u1, state = opt.update({'w': jnp.asarray(g1)}, state)
  u2, state = opt.update({'w': jnp.asarray(g2)}, state)
  np.testing.assert_allclose(u1['w'], -mom1, rtol=1e-6)
  np.testing.assert_allclose(u2['w'], -mom2, rtol=1e-6)


def test_weight_decay_mask_excludes_batchnorm_and_biases():
  params = {'conv1': {'kernel': 1}, 'bn1': {'scale': 1, 'bias': 1},
            'layer1_0': {'downsample_bn': {'scale': 1, 'bias': 1},
                         'se': {'reduce': {'kernel': 1, 'bias': 1}}},
            'fc': {'kernel': 1, 'bias': 1}}
  mask = optim.weight_decay_mask(params, default.get_config().weight_decay_exclude)
  assert mask == {'conv1': {'kernel': True}, 'bn1': {'scale': False, 'bias': False},
                  'layer1_0': {'downsample_bn': {'scale': False, 'bias': False},
                               'se': {'reduce': {'kernel': True, 'bias': False}}},
                  'fc': {'kernel': True, 'bias': False}}
  # EfficientNet recipe: only BatchNorm is excluded (the official code decays SE/FC biases).
  eff = optim.weight_decay_mask(params, r'bn[^/]*/(scale|bias)$')
  assert eff['fc']['bias'] and not eff['bn1']['bias']


def test_l2_penalty_is_half_sum_of_squares():
  params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([3.0])}
  assert float(optim.l2_penalty(params, {'a': True, 'b': False})) == pytest.approx(2.5)


def test_ema_warmup_decay():
  assert float(optim.ema_decay_at(0, 0.9999, True)) == pytest.approx(0.1)
  assert float(optim.ema_decay_at(90, 0.9999, True)) == pytest.approx(91 / 100)
  assert float(optim.ema_decay_at(90, 0.9999, False)) == pytest.approx(0.9999)


def test_metrics_of_known_logits_with_padding():
  logits = jnp.array([
      [9, 1, 2, 3, 4, 5, 0],   # label 0: top-1
      [1, 9, 8, 7, 6, 5, 0],   # label 4: 5th largest -> top-5 only
      [1, 9, 8, 7, 6, 5, 0],   # label 6: smallest -> neither
      [0, 0, 0, 9, 0, 0, 0],   # label 3: top-1, but padding (mask 0)
  ], jnp.float32)
  labels = jnp.array([0, 4, 6, 1])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  m = steps.EvalMetrics.single_from_model_output(
      **steps.classification_outputs(logits, labels, mask)).compute()
  assert float(m['top1']) == pytest.approx(1 / 3)
  assert float(m['top5']) == pytest.approx(2 / 3)
  assert float(m['num_examples']) == 3
  expected_loss = np.mean([-jax.nn.log_softmax(logits[i])[labels[i]] for i in range(3)])
  assert float(m['loss']) == pytest.approx(float(expected_loss), rel=1e-6)


def test_label_smoothing_targets():
  t = steps.soft_targets(jnp.array([2]), 4, 0.1)
  np.testing.assert_allclose(t, [[0.025, 0.025, 0.925, 0.025]], rtol=1e-6)


def _large_batch_problem():
  rng = np.random.RandomState(0)
  params = {'conv': {'kernel': rng.randn(3, 4).astype(np.float32)},
            'bn1': {'scale': rng.rand(4).astype(np.float32) + 0.5},
            'fc': {'bias': rng.randn(4).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
           for _ in range(2)]
  return params, grads


def _run_two_steps(opt, params, grads):
  state = opt.init(params)
  for g in grads:
    updates, state = opt.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


def test_lars_two_steps_by_hand():
  c = config(optimizer='lars', weight_decay=1e-4, momentum=0.9, lars_trust_coefficient=1e-3,
             lars_epsilon=0.0)
  params, grads = _large_batch_problem()
  got = _run_two_steps(optim.create_optimizer(c, optax_constant(0.1)), params, grads)
  # You et al. 2017 / MLPerf: v = m v + lr * eta ||w|| / ||g + wd w|| * (g + wd w); w -= v.
  # BN scale and biases (weight_decay_exclude): plain momentum SGD, no decay, no trust ratio.
  for group, name in (('conv', 'kernel'), ('bn1', 'scale'), ('fc', 'bias')):
    w, v = np.array(params[group][name], np.float64), 0.0
    for g in grads:
      g = np.asarray(g[group][name], np.float64)
      if group == 'conv':
        u = g + 1e-4 * w
        u = u * 1e-3 * np.linalg.norm(w) / np.linalg.norm(u)
      else:
        u = g
      v = 0.9 * v + 0.1 * u
      w = w - v
    np.testing.assert_allclose(got[group][name], w, rtol=2e-5, atol=1e-7)
  assert optim.loss_weight_decay(c) == 0.0  # the decay is not also in the loss


def test_lamb_two_steps_by_hand():
  c = config(optimizer='lamb', weight_decay=1e-2)
  params, grads = _large_batch_problem()
  got = _run_two_steps(optim.create_optimizer(c, optax_constant(0.01)), params, grads)
  for group, name in (('conv', 'kernel'), ('bn1', 'scale'), ('fc', 'bias')):
    w, m, v = np.array(params[group][name], np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
      g = np.asarray(g[group][name], np.float64)
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      u = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-6)
      if group == 'conv':  # You et al. 2020: decay and layer-wise trust ratio ||w|| / ||u||
        u = u + 1e-2 * w
        u = u * np.linalg.norm(w) / np.linalg.norm(u)
      w = w - 0.01 * u
    np.testing.assert_allclose(got[group][name], w, rtol=2e-5, atol=1e-7)


def test_poly_schedule_by_hand():
  c = config(learning_rate=0.1, batch_size=2560, lr_schedule='poly', warmup_epochs=1.0,
             lr_poly_power=2.0)
  sched = optim.create_schedule(c, steps_per_epoch=10, total_steps=110)
  assert float(sched(5)) == pytest.approx(0.5)          # peak 1.0, half way through warmup
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(35)) == pytest.approx((1 - 25 / 100) ** 2)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


def optax_constant(value):
  return lambda count: jnp.asarray(value, jnp.float32)
