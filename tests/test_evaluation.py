"""Evaluation suite: metrics by hand, every shipped evaluator on local TFDS copies, multi-host
padding, flip TTA, the resolution / crop sweep."""
import csv
import dataclasses
import math
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import fake_eval_sets as fake
from senet_jax import evaluation
from senet_jax.evaluation import metrics
from senet_jax.tools import evaluate
from senet_jax.training.validate import ConfigError
from suite_cost import host_devices_env

RAW = evaluation.Preprocessing(fake.SIZE, 1.0, 'bilinear', (0.0,) * 3, (1.0,) * 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 7  # examples per fake set: uneven for every batch and process count used here


def _suite(logits, labels, mask, subset=None):
  """Per-example outputs and computed SuiteMetrics, in one compiled call (eager is slow)."""
  def f(logits, labels, mask):
    out = metrics.outputs(logits, labels, mask, subset)
    return out, metrics.SuiteMetrics.single_from_model_output(**out).compute()
  return jax.jit(f)(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask, jnp.float32))


@jax.jit
def _ece(conf, top1, mask):
  return metrics.Calibration.from_model_output(conf, top1, mask)


def test_ece_fifteen_bins_by_hand():
  conf = jnp.array([0.95, 0.95, 0.5, 0.25, 0.9])
  top1, mask = jnp.array([1.0, 0, 1, 0, 1]), jnp.array([1.0, 1, 1, 1, 0])
  # bins (b/15, (b+1)/15]: 0.95 -> 14, 0.5 -> 7, 0.25 -> 3; the last example is masked.
  # ECE = 2/4 |0.5 - 0.95| + 1/4 |1 - 0.5| + 1/4 |0 - 0.25| = 0.225 + 0.125 + 0.0625
  whole = _ece(conf, top1, mask)
  assert float(whole.compute()) == pytest.approx(0.4125, abs=1e-6)
  halves = _ece(conf[:2], top1[:2], mask[:2]).merge(_ece(conf[2:], top1[2:], mask[2:]))
  assert float(halves.compute()) == pytest.approx(0.4125, abs=1e-6)
  np.testing.assert_array_equal(metrics.bin_index(jnp.array([0.0, 0.05, 0.07, 0.5, 1.0])),
                                [0, 0, 1, 7, 14])


def test_confidence_and_nll_of_int_labels():
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (0.25, 0.75)
  out, m = _suite(logits, [1, 0], [1, 1])
  np.testing.assert_allclose(out['confidence'], [0.75, 0.75], rtol=1e-6)
  np.testing.assert_allclose(out['loss'], [-math.log(0.75), -math.log(0.25)], rtol=1e-6)
  # One bin (0.75): accuracy 1/2, confidence 0.75.
  assert float(m['ece']) == pytest.approx(0.25) and float(m['top1']) == 0.5


def test_real_two_correct_labels_and_an_unlabelled_example():
  logits = np.zeros((3, 10), np.float32)
  logits[0, [5, 2]] = [4, 1]  # best 5: one of its two labels
  logits[1, [7, 2]] = [4, 3]  # best 7 is wrong, second-best 2 is a label
  labels = np.zeros((3, 10), np.int32)
  labels[0, [2, 5]] = labels[1, [2, 5]] = 1  # example 2 has no label: excluded
  _, m = _suite(logits, labels, [1, 1, 1])
  assert float(m['num_examples']) == 2 and float(m['top1']) == 0.5 and float(m['top5']) == 1
  e = math.e
  nll0 = -math.log((e + e ** 4) / (8 + e + e ** 4))          # -log P({2, 5})
  nll1 = -math.log((e ** 3 + 1) / (8 + e ** 3 + e ** 4))     # logit(2) = 3, logit(5) = 0
  assert float(m['loss']) == pytest.approx((nll0 + nll1) / 2, rel=1e-5)


def test_imagenet_r_and_a_class_subsets():
  r, a = (evaluation.class_subset_indices(n) for n in ('imagenet_r', 'imagenet_a'))
  assert len(r) == len(a) == 200 and len(set(r)) == len(set(a)) == 200
  # n01443537 goldfish, n01484850 great white shark, n01494475 hammerhead; n01498041 stingray.
  assert list(r[:3]) == [1, 2, 4] and a[0] == 6 and 0 not in r and 0 not in a
  timm_info = os.path.join(os.path.dirname(pytest.importorskip('timm').__file__), 'data',
                           '_info')
  for name, ours in (('imagenet_r', r), ('imagenet_a', a)):
    with open(os.path.join(timm_info, f'{name}_indices.txt')) as f:
      assert list(ours) == [int(line) for line in f if line.strip()]


def test_class_subset_restricts_logits_before_everything():
  logits = jnp.array([[9.0, 1, 0, 2, 0, 0], [9.0, 1, 0, 2, 0, 0]])
  out, _ = _suite(logits, [3, 2], [1, 1], subset=[1, 3, 4])
  # Class 0 (9.0) is outside the subset: the best of {1, 3, 4} is 3 = the label. Label 2 is
  # not in the subset: that example does not count.
  np.testing.assert_array_equal(out['mask'], [1, 0])
  assert float(out['top1'][0]) == 1.0
  assert float(out['loss'][0]) == pytest.approx(-math.log(math.e ** 2 / (math.e + 1 + math.e ** 2)))


def test_flip_tta_averages_probabilities():
  rows = jnp.log(jnp.array([[0.8, 0.2], [0.4, 0.6]]))
  images = jnp.zeros((1, 2, 2, 1)).at[:, :, 1].set(1.0)  # left column 0, right column 1

  def apply(variables, x):
    return rows[x[:, 0, 0, 0].astype(jnp.int32)]
  averaged = jax.jit(lambda x: metrics.flip_averaged_logits(apply, None, x))(images)
  np.testing.assert_allclose(jnp.exp(averaged), [[0.6, 0.4]], rtol=1e-6)


def _subset(spec):
  if spec.class_subset:
    return list(evaluation.class_subset_indices(spec.class_subset))
  return list(range(10, 1000, 10))


def _int_label_set(spec):
  """Example i: label L_i; even rows predict it, odd rows rank it second; rows N + i predict it
  strongly (the right half, seen by flip TTA). Subset sets get class 0 (outside) on top."""
  classes = _subset(spec)
  labels = [classes[i] for i in range(N)]
  table = np.zeros((2 * N, 1000), np.float32)
  for i, label in enumerate(labels):
    if i % 2 == 0:
      table[i, label] = 5
    else:
      table[i, [classes[i + 1], label]] = [5, 4]
    table[N + i, label] = 10
    if spec.class_subset:
      table[[i, N + i], 0] = 20
  examples = [{'image': fake.gray(i, right_row=N + i), 'label': labels[i]} for i in range(N)]
  return examples, table, labels


def _real_set():
  """ReaL: two-label examples (one right, one right only in top-5), one without labels."""
  real = [[10, 11], [20, 21], [], [40], [50], [60], [70, 71, 72]]
  best = {0: 11, 1: 30, 3: 40, 4: 51, 5: 60, 6: 72}
  table = np.zeros((2 * N, 1000), np.float32)
  for i, c in best.items():
    table[i, c] = 5
  table[1, 21] = table[4, 50] = 4
  examples = [{'image': fake.gray(i), 'real_label': r, 'original_label': (r or [0])[0]}
              for i, r in enumerate(real)]
  return examples, table


def _reference_nll(table, rows, labels):
  logp = table[rows] - np.log(np.sum(np.exp(table[rows]), axis=1, keepdims=True))
  return float(np.mean([-logp[k, l] for k, l in enumerate(labels)]))


@pytest.fixture(scope='module')
def eval_sets(tmp_path_factory):
  """Every shipped evaluator's dataset as a tiny local TFDS copy: {name: (spec, table, ...)}."""
  data_dir = str(tmp_path_factory.mktemp('eval_tfds'))
  sets = {}
  for name, spec in evaluation.SHIPPED.items():
    if spec.label_key == 'real_label':
      examples, table = _real_set()
      labels = None
    else:
      examples, table, labels = _int_label_set(spec)
    fake.build(data_dir, spec.dataset, spec.split, examples)
    sets[name] = (spec, table, labels)
  return data_dir, sets


def _evaluator(spec, table, data_dir, batch_size=4, prep=RAW):
  model = fake.Oracle({0: table})
  return evaluation.Evaluator(spec, model, prep, 1000, batch_size, data_dir)


NO_PARAMS = [('', {}, {})]


@pytest.mark.parametrize('name', list(evaluation.SHIPPED))
def test_every_shipped_evaluator_on_a_local_copy(eval_sets, name):
  data_dir, sets = eval_sets
  spec, table, labels = sets[name]
  named = _evaluator(spec, table, data_dir).run(NO_PARAMS)
  assert all(k.startswith(f'{name}_') for k in named)  # metric names carry the evaluator's
  results = {k[len(name) + 1:]: v for k, v in named.items()}
  if name == 'real':  # right: 0, 3, 5, 6; 1 and 4 in top-5; 2 has no label
    assert results == pytest.approx({'top1': 4 / 6, 'top5': 1.0, 'num_examples': 6,
                                     'loss': results['loss'], 'ece': results['ece']})
    return
  # Even examples right, odd ones second; class 0 (A / R) lies outside their subsets.
  assert results['top1'] == pytest.approx(4 / 7) and results['top5'] == 1.0
  assert results['num_examples'] == N
  sub = _subset(spec) if spec.class_subset else list(range(1000))
  restricted = table[:, sub]
  idx = [sub.index(l) for l in labels]
  assert results['loss'] == pytest.approx(_reference_nll(restricted, range(N), idx), rel=1e-4)


@pytest.mark.parametrize('process_count', [3])
def test_uneven_split_over_processes_counts_every_example_once(eval_sets, process_count):
  data_dir, sets = eval_sets
  spec, table, _ = sets['real']
  evaluator = _evaluator(spec, table, data_dir, batch_size=6)
  merged = None
  for pid in range(process_count):
    totals = evaluator.totals(NO_PARAMS, process_index=pid, process_count=process_count)['']
    merged = totals if merged is None else merged.merge(totals)
  single = evaluator.run(NO_PARAMS)
  assert evaluation.flatten({'': merged}, 'real') == pytest.approx(single)
  assert single['real_num_examples'] == 6 and single['real_top1'] == pytest.approx(4 / 6)


def test_flip_tta_end_to_end(eval_sets):
  data_dir, sets = eval_sets
  spec, table, labels = sets['v2']
  flipped = _evaluator(dataclasses.replace(spec, flip=True), table, data_dir).run(NO_PARAMS)
  # The mirror image shows the right half (rows N + i): the label with p = e^10 / (e^10 + 999),
  # which outweighs every left-half mistake once the probabilities are averaged.
  assert flipped['v2_top1'] == 1.0
  p = np.exp(table) / np.exp(table).sum(1, keepdims=True)
  mean = (p[:N] + p[N:]) / 2
  assert flipped['v2_loss'] == pytest.approx(
      float(np.mean([-np.log(mean[i, l]) for i, l in enumerate(labels)])), rel=1e-4)


@pytest.fixture(scope='module')
def sweep_set(tmp_path_factory):
  """A Sketch copy where the 16x16 center shows other rows than the border, and tables by size.

  Border rows 0..6 (right for even examples at 32 px), center rows 7..13 (all right at 32 px);
  at 16 px every row is wrong.
  """
  data_dir = str(tmp_path_factory.mktemp('sweep_tfds'))
  labels = list(range(10, 10 + N))
  examples = [{'image': fake.gray(i, center_row=N + i), 'label': labels[i]} for i in range(N)]
  fake.build(data_dir, 'imagenet_sketch', 'test', examples)
  at32, at16 = np.zeros((2 * N, 1000), np.float32), np.zeros((2 * N, 1000), np.float32)
  for i, label in enumerate(labels):
    at32[i, label if i % 2 == 0 else 999] = 5
    at32[N + i, label] = 5
    at16[[i, N + i], 999] = 5
  return data_dir, {32: at32, 16: at16}


def test_resolution_and_crop_sweep_reports_the_best(sweep_set):
  data_dir, tables = sweep_set
  spec = evaluation.EvalSpec('sweep', 'imagenet_sketch', 'test')
  rows = evaluation.sweep(spec, fake.Oracle(tables), RAW, NO_PARAMS, [16, 32], [1.0, 0.5],
                          num_classes=1000, batch_size=4, data_dir=data_dir)
  grid = {(r['image_size'], r['crop_pct']): r['top1'] for r in rows}
  assert grid == pytest.approx({(16, 1.0): 0, (16, 0.5): 0, (32, 1.0): 4 / 7, (32, 0.5): 1})
  best = evaluation.best(rows)
  assert (best['image_size'], best['crop_pct']) == (32, 0.5)
  assert all(r['images_per_second'] > 0 for r in rows)


def test_validate_cli_writes_timm_columns(sweep_set, tmp_path, monkeypatch, capsys):
  data_dir, tables = sweep_set
  weights = evaluate.Weights('ckpt/oracle', 'oracle', fake.Oracle(tables, with_bias=True),
                             {'params': {'bias': np.zeros(1000, np.float32)}}, 1000, RAW,
                             {'dataset': 'imagenet_sketch', 'eval_split': 'test'})
  monkeypatch.setattr(evaluate, 'load_weights', lambda **kw: weights)
  out = str(tmp_path / 'results.csv')
  args = ['--checkpoint=ckpt/oracle', f'--data_dir={data_dir}', '--resolutions=32',
          '--crops=1.0,0.5', '--batch_size=4', f'--output={out}']
  assert evaluate.main(args) == 0
  with open(out) as f:
    rows = list(csv.DictReader(f))
  timm_columns = ['model', 'img_size', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count',
                  'crop_pct', 'interpolation']
  assert list(rows[0])[:len(timm_columns)] == timm_columns
  assert [(r['img_size'], r['crop_pct']) for r in rows] == [('32', '1.0'), ('32', '0.5')]
  r = rows[0]  # 32 px, full image: 4 of 7 right, in percent as timm writes them
  assert (r['top1'], r['top1_err'], r['interpolation']) == ('57.143', '42.857', 'bilinear')
  assert (r['param_count'], r['gmacs'], r['num_examples']) == ('0.0', '0.0', '7')
  assert [row['best'] for row in rows] == ['0', '1']
  assert rows[1]['evaluator'] == 'imagenet_sketch' and rows[1]['top1'] == '100.0'
  assert evaluate.main(args[:-1] + ['--evals=nope', f'--output={out}']) == 2
  assert "unknown evaluator 'nope'" in capsys.readouterr().err
  assert evaluate.main(args[:-1] + ['--resolutions=32,big', f'--output={out}']) == 2
  assert evaluate.main(args[:-1] + ['--resolutions=16', f'--output={out}']) == 2
  assert 'below the minimum input of oracle (32 px)' in capsys.readouterr().err
  monkeypatch.undo()
  assert evaluate.main([f'--checkpoint={tmp_path / "none"}', f'--output={out}']) == 4
  assert 'no checkpoint found' in capsys.readouterr().err


def _config(**kw):
  c = ml_collections.ConfigDict(dict(dataset='senet_digits', eval_split='test', num_classes=1000,
                                     evals='', eval_definitions={}, eval_tta='none'))
  c.update(kw)
  return c


def test_evals_from_config_names_and_errors():
  specs = evaluation.specs_from_config(_config(evals='real, r', eval_tta='flip'))
  assert [s.name for s in specs] == ['', 'real', 'r'] and all(s.flip for s in specs)
  assert specs[2].class_subset == 'imagenet_r'
  custom = evaluation.specs_from_config(_config(
      evals='mine', eval_definitions={'mine': dict(dataset='x', split='y', image_size=64)}))
  assert custom[1] == evaluation.EvalSpec('mine', 'x', 'y', image_size=64)
  inline = evaluation.specs_from_config(_config(evals='tr=imagenet_v2/matched-frequency:test'))
  assert inline[1] == evaluation.EvalSpec('tr', 'imagenet_v2/matched-frequency', 'test')
  with pytest.raises(ConfigError, match="'name=dataset:split'"):
    evaluation.specs_from_config(_config(evals='tr=senet_digits'))
  with pytest.raises(ConfigError, match="unknown evaluator 'nope'"):
    evaluation.specs_from_config(_config(evals='real,nope'))
  with pytest.raises(ConfigError, match='eval_definitions.mine: unknown field'):
    evaluation.specs_from_config(_config(evals='mine', eval_definitions={'mine': {'splt': 'x'}}))
  with pytest.raises(ConfigError, match="'a'.*1000-class"):
    evaluation.specs_from_config(_config(evals='a', num_classes=10))
  with pytest.raises(ConfigError, match='eval_tta'):
    evaluation.specs_from_config(_config(eval_tta='five_crop'))
  assert evaluation.metric_key('ema_', 'real', 'top1') == 'ema_real_top1'
  assert evaluation.metric_key('ema_', '', 'top1') == 'ema_top1'


def _validate_processes(num_processes, devices, data_dir, output):
  """`python -m senet_jax.tools.evaluate` on digits in `num_processes` local processes."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = host_devices_env(devices, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  procs = []
  for pid in range(num_processes):
    cmd = [sys.executable, '-m', 'senet_jax.tools.evaluate', '--model=mobilenetv3_small_100',
           '--num_classes=10', '--dataset=senet_digits', '--split=test', f'--data_dir={data_dir}',
           '--resolutions=32', '--batch_size=60', f'--output={output}']
    if num_processes > 1:
      cmd += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
              f'--process_id={pid}']
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0] * num_processes, [o[1][-2000:] for o in outs]
  with open(output) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # three JAX processes compile MobileNetV3: minutes on 2 cores
@pytest.mark.multiprocess
def test_validate_on_two_processes_counts_every_example_once(digits_dir, tmp_path):
  # 359 examples: shards of 179 and 180, each padded to 6 local batches of 30.
  multi = _validate_processes(2, 1, digits_dir, str(tmp_path / 'multi.csv'))
  single = _validate_processes(1, 2, digits_dir, str(tmp_path / 'single.csv'))
  assert len(multi) == len(single) == 1 and multi[0]['num_examples'] == '359'
  for key in ('top1', 'top5', 'nll', 'ece', 'param_count', 'gmacs'):
    assert float(multi[0][key]) == pytest.approx(float(single[0][key]), abs=2e-3), key
