"""Evaluation suite: several evaluators per run (ImageNet, ReaL, V2, A, R, Sketch), flip TTA,
calibration (15-bin ECE, NLL) and the test-time resolution / crop sweep.

`python -m senet_jax.tools.evaluate` writes timm-style results CSVs with it.
"""
from senet_jax.evaluation.evaluators import (SHIPPED, EvalSpec, Evaluator, Preprocessing,
                                             check_specs, class_subset_indices, flatten,
                                             metric_key, run_all, specs_from_config)
from senet_jax.evaluation.metrics import NUM_BINS, SuiteMetrics
from senet_jax.evaluation.resolution import best, sweep

__all__ = ['SHIPPED', 'EvalSpec', 'Evaluator', 'Preprocessing', 'check_specs',
           'class_subset_indices', 'flatten', 'metric_key', 'run_all', 'specs_from_config',
           'NUM_BINS', 'SuiteMetrics', 'best', 'sweep']
