"""Elastic resume (a checkpoint moves between meshes) and fsdp across processes, through main.py.

Each run is a subprocess with its own simulated CPU device count; the global batch is the same,
so every mesh computes the same update up to float summation order.
"""
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from senet_jax.training import checkpoint as ckpt_lib
from test_fault_tolerance import ROOT, _launch, main_cmd
from suite_cost import host_devices_env

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(digits_dir):
  return digits_dir


def _train(workdir, data_dir, devices, *extra):
  env = host_devices_env(devices)
  out = subprocess.run(main_cmd(workdir, data_dir, '--config.compilation_cache_dir=', *extra),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('first,second', [
    ((8, ('--config.mesh_fsdp=8',)), (4, ('--config.mesh_fsdp=1',))),   # fsdp=8 -> data-only
    ((4, ('--config.mesh_fsdp=1',)), (8, ('--config.mesh_fsdp=8',))),   # and back
], ids=['fsdp8_to_data4', 'data4_to_fsdp8'])
def test_checkpoint_restores_on_another_mesh(data_dir, tmp_path, first, second):
  straight = str(tmp_path / 'straight')
  _train(straight, data_dir, first[0], *first[1])        # checkpoints at steps 3 and 6
  moved = str(tmp_path / 'moved')
  shutil.copytree(straight, moved)
  shutil.rmtree(os.path.join(moved, 'checkpoints', '6'))  # resume from step 3 ...
  log = _train(moved, data_dir, second[0], *second[1])     # ... on the other mesh
  assert 'resumed from step 3' in log
  _assert_close(ckpt_lib.load_params(moved), ckpt_lib.load_params(straight))


@pytest.mark.multiprocess
def test_two_processes_with_fsdp_across_them_equal_one_process(data_dir, tmp_path):
  multi = str(tmp_path / 'multi')
  codes, outs = _launch([multi, multi], data_dir, 2, 2, extra=('--config.mesh_fsdp=4',))
  assert codes == [0, 0], [o[1][-2000:] for o in outs]
  single = str(tmp_path / 'single')
  codes1, outs1 = _launch([single], data_dir, 1, 4)
  assert codes1 == [0], outs1[0][1][-2000:]
  a, b = ckpt_lib.load_params(multi), ckpt_lib.load_params(single)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
