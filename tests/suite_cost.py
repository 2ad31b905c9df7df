"""What keeps `make test` under 10 minutes on 2 cores: the session's compilation cache, and
the tests that run only in the second, slow invocation (`make test-slow`, run by .ci/run).

SLOW lists tests by node id rather than by decorators in their files, so the cost policy lives
in one place (and the test files, edited by others in parallel, stay untouched). Each entry
states its measured call time: `pytest -n 2 -m "not slow" --durations=80` on the shared
2-core machine under heavy load (2026-12-03, ~6x slower than a quiet machine; ranking only).
"""
import os
import shutil
import tempfile

import pytest

CACHE_VARIABLE = 'SENET_COMPILATION_CACHE_DIR'

SLOW = {
    # Issue 36: every console script's job from `pip install .`, outside the checkout (train,
    # a two-point sweep, predict, cam, excitation, validate, summary, convert, export): ~10
    # processes, each importing JAX and TensorFlow; the install's fast sibling (complexity) stays.
    'tests/test_packaging.py::'
    'test_every_console_script_does_its_job_outside_the_checkout[regular]',
    # Three main.py processes (two with gloo collectives): 962 s.
    'tests/test_fault_tolerance.py::test_two_processes_equal_one_process_with_four_devices',
    # Two main.py processes, failed its own 120 s limit under load: 129 s.
    'tests/test_fault_tolerance.py::test_unshared_workdir_is_detected_within_seconds',
    'tests/test_fault_tolerance.py::test_non_finite_loss_stops_every_process_at_the_same_step',
    # Issue 34: the Slurm script end to end, two main.py processes (gloo): 204 s under load.
    # Sibling kept: the same script's tasks connecting through JAX's Slurm detection (a probe).
    'tests/test_launch.py::test_slurm_script_trains_two_processes_with_data_across_nodes',
    # main.py evaluating converted weights in a subprocess: 397 s.
    'tests/test_convert.py::test_cli_roundtrip_to_eval_on_digits',
    # Two main.py processes, the resumed one training ~397 steps: 371 s.
    'tests/test_fault_tolerance.py::test_sigterm_checkpoints_exits_42_and_resumes',
    # Several short training runs: 315 s.
    'tests/test_analysis.py::test_sweep_runs_skips_finished_points_and_summarizes',
    # Full-size EfficientNet initialisers: 211 s.
    'tests/test_efficientnet.py::test_official_initialisers',
    # Two training runs (one resumed over a damaged checkpoint): 209 s.
    'tests/test_fault_tolerance.py::test_damaged_newest_checkpoint_falls_back_without_deleting',
    # Full-width SENet-154 / SE-ResNeXt-50 against timm: 134 s, 128 s, 101 s.
    'tests/test_convert.py::test_senet154_parity_on_a_shallow_variant',
    'tests/test_convert.py::test_timm_parity[seresnext50_32x4d]',
    'tests/test_convert.py::test_timm_parity[legacy_seresnext50_32x4d]',
    # After merging this round's features: `make test` took 13.5 min on a quiet 2-core machine
    # (797 s of tests, 736 tests); these are the next most expensive (call time, quiet machine,
    # 2 workers). Each family keeps a cheaper sibling in the fast suite (se_resnet18,
    # mobilenetv3_small_100, se_vgg16 train and gradient tests; the 8-device trainer test).
    'tests/test_se_networks.py::test_trains_a_few_steps_on_digits[se_mobilenet_v1]',  # 54 s
    'tests/test_se_networks.py::test_trains_a_few_steps_on_digits[se_shufflenet_v1_g3]',  # 53 s
    'tests/test_se_networks.py::test_trains_a_few_steps_on_digits[se_bn_inception]',  # 49 s
    'tests/test_se_networks.py::test_trains_a_few_steps_on_digits[se_inception_resnet_v2]',  # 45 s
    'tests/test_se_networks.py::test_every_parameter_gets_a_gradient[se_shufflenet_v1_g3]',  # 41 s
    'tests/test_train.py::test_interrupted_run_resumes_to_identical_state',  # 40 s
    'tests/test_se_networks.py::test_every_parameter_gets_a_gradient[se_inception_resnet_v2]',
    'tests/test_remat.py::test_block_remat_equals_no_remat[efficientnet_b0]',  # 26 s
    'tests/test_se_networks.py::test_every_parameter_gets_a_gradient[se_bn_inception]',  # 25 s
    'tests/test_se_networks.py::test_every_parameter_gets_a_gradient[se_mobilenet_v1]',  # 25 s
    'tests/test_train.py::test_init_from_reinitialises_the_head',  # 24 s
    'tests/test_resnet.py::test_every_parameter_gets_a_nonzero_gradient[se_resnext50_32x4d-kw2]',
    'tests/test_resnet.py::test_every_parameter_gets_a_nonzero_gradient[senet154-kw3]',  # 18 s
    # Second round (issues #16-#18 merged, mimalloc): `make test` had to leave room for creating
    # the environment inside 10 minutes. Call times under load ~5 (2 workers), each with a
    # cheaper sibling kept in the fast suite (named after the time).
    # main.py subprocesses: 63 s, 57 s (+15 s fixture); config_diff's unit tests and
    # test_checkpoint_of_another_model_names_parameter_and_shapes stay.
    'tests/test_checkpoint_safety.py::test_changed_batch_size_on_resume_is_refused',
    'tests/test_checkpoint_safety.py::test_wrong_model_on_the_command_line_exits_2_and_touches_nothing',
    # 44 s; test_cam_and_grad_cam_on_a_hand_built_feature_map stays.
    'tests/test_analysis.py::test_cam_peak_follows_the_class_relevant_patch',
    # 38 s; test_cbam_matches_paper_equations and the ECA / eSE / GE parity tests stay.
    'tests/test_attention.py::test_logit_parity_with_timm[cbam]',
    # 37 s; the exact parameter counts and avg_pool_ceil against torch stay.
    'tests/test_ecaresnet.py::test_logit_parity_with_timm[ecaresnet26t-timm_kwargs0-72]',
    # 35 s; block remat on the same network and the per-stage region count stay.
    'tests/test_remat.py::test_stage_remat_equals_no_remat[se_resnet18]',
    # The final fresh-clone `make test` took 10 min 6 s with the environment (7 min 36 s of
    # tests): these four (under load: 34 s, 31 s, 18 s, 14 s + the 15 s fixture only they
    # used) leave margin. Siblings kept: the excitation CLI test; the mobilenetv3 and se_resnet18
    # training tests; features of legacy_seresnet18; the workdir lock's unit test.
    'tests/test_analysis.py::test_excitation_means_are_per_class_averages',
    'tests/test_se_networks.py::test_trains_a_few_steps_on_digits[se_vgg16]',
    'tests/test_features.py::test_features_match_timm[legacy_seresnext50_32x4d]',
    'tests/test_checkpoint_safety.py::test_second_run_on_a_locked_workdir_exits_5_naming_the_first',
    # Round 3 (issue 31): four main.py processes, 82 s under load. Sibling kept: the in-process
    # test_preemption_after_a_nonfinite_loss_writes_nothing_and_raises (the same save path).
    'tests/test_checkpoint_integrity.py::'
    'test_nan_then_sigterm_three_times_keeps_the_good_checkpoint_and_exits_3',
    # Round 3, after merging: `make test` took 9 min 54 s of tests (1036) under partial load.
    # Call times under load, each with a cheaper sibling kept in the fast suite (named after it).
    # main.py subprocesses, 28-46 s and 13-27 s: the in-process Ctrl-C test and
    # test_disk_full_during_checkpoint_keeps_the_previous_one.
    'tests/test_checkpoint_integrity.py::test_ctrl_c_writes_a_checkpoint_and_exits_130',
    'tests/test_checkpoint_integrity.py::test_disk_full_exits_4_in_one_line_within_30_s',
    # TF's SavedModel export to a full disk, 16-19 s: the StableHLO case.
    'tests/test_checkpoint_integrity.py::'
    'test_export_to_a_full_disk_exits_4_and_leaves_nothing[savedmodel]',
    # A trainer run for the README's sample output, 15-31 s: the README snippets' test.
    'tests/test_readme.py::test_readme_sample_output_has_the_format_of_a_real_run',
    # Restoring across slice counts on 8 simulated devices, 18 s: the fake-device mesh tests.
    'tests/test_pod_ops.py::test_checkpoint_restores_onto_another_slice_count',
    # The fresh-clone `make test` then took 8 min 47 s of tests (1034) on a quiet machine. These
    # main.py subprocesses (call times there) have in-process siblings of the same rule:
    # test_bad_multi_slice_settings_name_the_field, test_validate_config_names_the_field (eval
    # interval), test_check_refuses_in_one_line_naming_batch_resolution_and_memory; and a docs page whose
    # snippets build three backbones (the README's snippets stay).
    'tests/test_pod_ops.py::test_cli_refuses_a_dcn_split_the_devices_cannot_make_with_exit_2',  # 18 s
    'tests/test_config_validation.py::test_cli_bad_value_exits_2_in_one_line_before_the_model_is_built[flags0-config.eval_every_epochs]',  # 18 s
    'tests/test_memory_check.py::test_main_refuses_a_step_that_cannot_fit_before_compiling',  # 16 s
    'tests/test_readme.py::test_docs_python_snippets_run_as_pasted[features.md]',  # 18 s
    # A second fresh clone right after took 10 min 13 s of tests (the same 1030; this machine's
    # speed varies by ~15% from run to run). Round 3's next most expensive fast tests (call
    # times there or under load), each with a cheaper sibling of the same rule kept:
    # in-process foreign-entry, config-rule and export-refusal tests; se_resnet18's NNX parity;
    # the Grain pipeline's unit tests; test_a_nonfinite_state_is_never_saved.
    'tests/test_checkpoint_integrity.py::test_a_foreign_file_in_checkpoints_stops_the_run_and_is_kept',  # 21 s
    'tests/test_config_validation.py::test_cli_bad_value_exits_2_in_one_line_before_the_model_is_built[flags1-config.num_train_steps]',  # 22 s
    'tests/test_checkpoint_integrity.py::'
    'test_export_to_a_full_disk_exits_4_and_leaves_nothing[stablehlo]',  # 14 s
    'tests/test_checkpoint_integrity.py::'
    'test_preemption_after_a_nonfinite_loss_writes_nothing_and_raises',  # 13 s
    'tests/test_grain_pipeline.py::test_trainer_learns_digits_on_grain',  # 10-17 s
    'tests/test_nnx.py::test_logits_and_statistics_equal_linen_in_train_and_eval[efficientnet_b0]',  # 8 s
    'tests/test_nnx.py::test_logits_and_statistics_equal_linen_in_train_and_eval[mobilenetv3_small_100]',  # 7 s
    # Issue 35 (NNX front end): a main.py run and a hub conversion; the converter-written
    # round trip and the Linen-parity tests of tests/test_nnx.py stay.
    'tests/test_nnx.py::test_a_trainer_checkpoint_round_trips',
    'tests/test_nnx.py::test_pretrained_hub_weights_give_timm_logits',
    # Issue 31 item 7: one module fixture (a 4-device subprocess, 3 meshes compiled, 2
    # checkpoints; ~40 s CPU, 42 s wall at load 3). The input-order test of the same file and
    # test_train's 8-device step test stay.
    'tests/test_elastic_equivalence.py::test_same_examples_keys_and_initial_state_on_every_mesh',
    'tests/test_elastic_equivalence.py::test_batchnorm_statistics_are_those_of_the_global_batch',
    'tests/test_elastic_equivalence.py::test_one_step_on_any_mesh_equals_the_1_device_step',
    'tests/test_elastic_equivalence.py::test_elastic_resume_continues_the_same_trajectory',
    # 2026-12-07 (issue 37): on that day's 2-core machine `make test` took 10 min 9 s after the
    # LLVM level and the ml_dtypes pin (pytest 521 s). Call times there, siblings kept: the
    # in-process test of every old tool path; se_resnet18's gradient test of the same rule.
    'tests/test_cli.py::test_an_old_path_run_with_python_m_notes_once_and_exits_as_the_new_one',  # 15 s
    'tests/test_resnet.py::test_every_parameter_gets_a_nonzero_gradient[se_resnet50-kw0]',  # 7 s
}


# LLVM's optimisation level for the code XLA:CPU generates. The suite's steps are tiny and its
# time is mostly compiling them; level 0 cut tests/test_resnet.py from 144 to 106 s (user CPU
# 270 -> 196 s; level 1: 118 s) on 2026-12-07's 2-core machine, every test passing. The HLO
# passes (fusion, layouts: what the tests' numbers depend on) are unchanged; only instruction
# selection and LLVM's own passes are lighter, and results can move by an ulp: a subprocess
# that replaced XLA_FLAGS would run at XLA's default level, so subprocesses with simulated
# devices get their environment from host_devices_env, which keeps the parent's flags.
# SENET_TEST_XLA_OPT=default keeps XLA's level.
TEST_XLA_FLAG = '--xla_backend_optimization_level=0'


def fast_compile_xla_flags(environ=None) -> None:
  """Appends TEST_XLA_FLAG to XLA_FLAGS (inherited by workers and main.py subprocesses) unless
  the run chose a level itself or opted out; call before JAX starts its backend."""
  environ = os.environ if environ is None else environ
  flags = environ.get('XLA_FLAGS', '')
  if environ.get('SENET_TEST_XLA_OPT') == 'default' or 'xla_backend_optimization_level' in flags:
    return
  environ['XLA_FLAGS'] = f'{flags} {TEST_XLA_FLAG}'.strip()


DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def host_devices_env(devices: int, **variables) -> dict[str, str]:
  """The environment for a subprocess that simulates `devices` CPU devices: this process's,
  with the device count appended to its XLA_FLAGS (an inherited count replaced), CPU only, and
  `variables` on top. Appending rather than replacing keeps the suite's flags (TEST_XLA_FLAG)
  in the child: it compiles as fast as the test process, and a test that compares the two bit
  for bit compares code generated the same way."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith(DEVICE_COUNT_FLAG + '=')]
  flags.append(f'{DEVICE_COUNT_FLAG}={devices}')
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags), 'JAX_PLATFORMS': 'cpu', **variables}


def session_compilation_cache() -> str | None:
  """Points CACHE_VARIABLE at a new tmp dir unless set (xdist workers inherit the
  controller's); returns the dir when this process created it."""
  if os.environ.get(CACHE_VARIABLE):
    return None
  path = tempfile.mkdtemp(prefix='senet_jax_test_xla_')
  os.environ[CACHE_VARIABLE] = path
  return path


def remove_compilation_cache(path: str | None) -> None:
  if path:
    shutil.rmtree(path, ignore_errors=True)


def mark_slow(items) -> None:
  """Adds the slow marker to every collected test in SLOW."""
  for item in items:
    if item.nodeid in SLOW:
      item.add_marker(pytest.mark.slow)
