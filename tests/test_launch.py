"""The launch recipes under launch/, run here with stand-ins for the tools they call.

No TPU VM, GKE cluster or Slurm cluster is reachable from the test machine, so each script runs
for real with `srun`, `scontrol`, `gcloud`, `xpk` and `ssh` replaced by small local programs
that record their arguments (srun and ssh also start the command locally), and `python`
replaced by tests/helpers/launch_probe.py, which connects the processes through
jax.distributed exactly as main.py's flags ask (Slurm auto-detection, or an explicit
coordinator) and exits 42 or 0 as told. Every main.py command in the scripts, docs/launch.md
and the README is checked against the flags main.py defines and the fields of the config.
"""
import ast
import glob
import json
import os
import random
import re
import socket
import stat
import subprocess
import sys

import pytest

from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, '*')))


def main_py_flags() -> set[str]:
  """Flag names main.py defines (absl DEFINE_* and aliases, the config file flag)."""
  with open(os.path.join(ROOT, 'senet_jax', 'main.py')) as f:  # main.py runs it
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and getattr(node.func, 'attr', '').startswith('DEFINE')
        and node.args and isinstance(node.args[0], ast.Constant)):
      names.add(node.args[0].value)
  return names


def config_problem(path: str, config=None) -> str | None:
  """None when `path` ('mesh_fsdp', 'distill.alpha', 'model_kwargs.x') is a config field."""
  config = default.get_config() if config is None else config
  head, _, rest = path.partition('.')
  if head not in config:
    return f'config.{path}: no such field'
  if head == 'model_kwargs' or not rest:  # model_kwargs: whatever the model accepts
    return None
  return config_problem(rest, config[head]) if hasattr(config[head], 'keys') else (
      f'config.{path}: {head} has no fields')


def main_invocations(text: str) -> list[list[str]]:
  """The --flags of every `main.py` command in shell-like text (line continuations joined)."""
  text = re.sub(r'\\\n\s*', ' ', text)
  commands = []
  for match in re.finditer(r'main\.py\b([^\n;|&]*)', text):
    commands.append(re.findall(r'--[\w.]+(?:=[^\s"\';$`]*)?', match.group(1)))
  return commands


def flag_problems(flags: list[str]) -> list[str]:
  """What is wrong with main.py flags: unknown names, unknown config fields, missing files."""
  known, problems = main_py_flags(), []
  for item in flags:
    name, _, value = item[2:].partition('=')
    if name == 'config.field':  # the README's placeholder for "any field"
      continue
    if name.startswith('config.'):
      problems.append(config_problem(name[len('config.'):]))
    elif name not in known:
      problems.append(f'--{name}: main.py defines no such flag')
    elif name == 'config' and value.endswith('.py') and not os.path.exists(
        os.path.join(ROOT, value)):
      problems.append(f'--config={value}: no such file')
  return [p for p in problems if p]


def test_flag_check_catches_mistakes():
  assert flag_problems(['--config.mesh_fsdp=8', '--distributed', '--coordinator_address=h:1',
                        '--config.distill.alpha=0.5', '--config.model_kwargs.width=2']) == []
  assert flag_problems(['--config.mesh_dcn=2', '--coordinator=h:1', '--config=configs/no.py',
                        '--config.distill.nope=1']) == [
      'config.mesh_dcn: no such field', '--coordinator: main.py defines no such flag',
      '--config=configs/no.py: no such file', 'config.nope: no such field']


@pytest.mark.parametrize('path', SCRIPTS + [os.path.join(ROOT, 'docs', 'launch.md'),
                                            os.path.join(ROOT, 'README.md')],
                         ids=os.path.basename)
def test_main_py_commands_use_flags_and_fields_that_exist(path):
  with open(path) as f:
    commands = main_invocations(f.read())
  assert commands, f'no main.py command in {path}'
  for flags in commands:
    assert flag_problems(flags) == [], flags
  # The default CONFIG a script falls back to exists.
  with open(path) as f:
    for config in re.findall(r'CONFIG=\$\{CONFIG:-([^}]+)\}', f.read()):
      assert os.path.exists(os.path.join(ROOT, config)), config


@pytest.mark.parametrize('path', SCRIPTS, ids=os.path.basename)
def test_scripts_are_valid_bash(path):
  assert subprocess.run(['bash', '-n', path], capture_output=True).returncode == 0


# ---- Stand-ins ------------------------------------------------------------------------------

FAKE_SRUN = '''
import json, os, subprocess, sys
args = sys.argv[1:]
json.dump(args, open(os.path.join(os.environ['FAKE_LOG'], 'srun.json'), 'w'))
while args[0].startswith('-'):
  args.pop(0)
n, nodes = int(os.environ['SLURM_NTASKS']), int(os.environ['SLURM_JOB_NUM_NODES'])
procs = [subprocess.Popen(args, env=dict(
    os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % (n // nodes)),
    SLURM_STEP_NODELIST=os.environ['SLURM_JOB_NODELIST'], SLURM_STEP_NUM_NODES=str(nodes)))
    for i in range(n)]
sys.exit(max(p.wait() for p in procs))  # as srun: the highest status of the tasks
'''
FAKE_RECORDER = '''
import json, os, subprocess, sys
name = os.path.basename(sys.argv[0])
with open(os.path.join(os.environ['FAKE_LOG'], name + '.jsonl'), 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
if name == 'ssh':                      # ssh HOST COMMAND: run it here
  sys.exit(subprocess.call(['bash', '-c', sys.argv[2]]))
if name == 'gcloud' and 'ssh' in sys.argv:  # one worker: run --command here
  command = [a for a in sys.argv if a.startswith('--command=')][0][len('--command='):]
  sys.exit(subprocess.call(['bash', '-c', command], cwd='/'))
'''


def _executable(path, text):
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


@pytest.fixture
def tools(tmp_path):
  """A bin directory of stand-ins, the probe as `python`, and where they write."""
  bin_dir, log, probe = tmp_path / 'bin', tmp_path / 'log', tmp_path / 'probe'
  for d in (bin_dir, log, probe):
    d.mkdir()
  head = f'#!{sys.executable}\n'
  _executable(bin_dir / 'srun', head + FAKE_SRUN)
  for name in ('scontrol', 'gcloud', 'xpk', 'ssh'):
    _executable(bin_dir / name, head + FAKE_RECORDER)
  python = _executable(tmp_path / 'python', f'#!/bin/sh\nexec {sys.executable} '
                       f'{ROOT}/tests/helpers/launch_probe.py "$@"\n')
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_LOG=str(log),
             PROBE_DIR=str(probe), JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  return {'env': env, 'python': str(python), 'log': log, 'probe': probe}


def _records(probe_dir):
  return {os.path.basename(p)[:-5]: json.load(open(p)) for p in glob.glob(f'{probe_dir}/*.json')}


def _recorded(log, name):
  path = log / f'{name}.jsonl'
  return [json.loads(line) for line in open(path)] if path.exists() else []


def _free_port(low=1024, high=65535):
  for port in random.sample(range(low, high + 1), 200):
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
        return port
      except OSError:
        continue
  raise RuntimeError('no free port')


def _run(script, env, *args, timeout=180):
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_slurm_script_connects_the_tasks_through_jax_detection_and_requeues_on_42(tools):
  # JAX's SlurmCluster takes the coordinator from the first node and port
  # 61440 + SLURM_JOB_ID % 4096: pick a job id whose port is free here.
  job_id = str(_free_port(61440, 65535) - 61440 + 4096 * 7)
  env = dict(tools['env'], WORKDIR='/shared/runs/t', PYTHON=tools['python'], PROBE_INIT='1,0',
             PROBE_EXITS='42,0', SLURM_JOB_ID=job_id, SLURM_NTASKS='2',
             SLURM_JOB_NODELIST='localhost', SLURM_JOB_NUM_NODES='2', SLURM_SUBMIT_DIR=ROOT)
  first = _run('slurm.sbatch', env, '--config.mesh_fsdp=1')
  assert first.returncode == 42, first.stderr[-2000:]
  assert _recorded(tools['log'], 'scontrol') == [['requeue', job_id]]
  runs = _records(tools['probe'])
  assert sorted(runs) == ['p0_0', 'p1_0']
  for i in (0, 1):
    got = runs[f'p{i}_0']
    assert got['process_index'] == i and got['process_count'] == 2 and got['gathered'] == [0, 1]
    assert got['main_exists'] and got['cwd'] == ROOT  # main.py run from the submit directory
    assert got['argv'][1:] == ['--config=configs/efficientnet_b3.py',
                               '--workdir=/shared/runs/t', '--distributed',
                               '--config.mesh_dcn_data=2', '--config.mesh_fsdp=1']
  second = _run('slurm.sbatch', env)  # the requeued job: finishes, nothing requeued
  assert second.returncode == 0, second.stderr[-2000:]
  assert len(_recorded(tools['log'], 'scontrol')) == 1


def test_multinode_script_names_the_coordinator_and_restarts_the_group_after_42(tools):
  env = dict(tools['env'], HOSTS='127.0.0.1 127.0.0.1', PORT=str(_free_port()), WORKDIR='/nfs/t',
             REMOTE_DIR=ROOT, REMOTE_PYTHON=tools['python'], PROBE_INIT='1,0', PROBE_EXITS='42,0')
  out = _run('multinode.sh', env, '--config.evals=real,v2')
  assert out.returncode == 0, out.stderr[-2000:]
  runs = _records(tools['probe'])
  assert sorted(runs) == ['p0_0', 'p0_1', 'p1_0', 'p1_1']  # the group ran twice
  for name, got in runs.items():
    if name.endswith('_0'):  # the first round connected through the named coordinator
      assert got['process_count'] == 2 and got['gathered'] == [0, 1]
    assert f'--process_id={name[1]}' in got['argv'] and '--config.evals=real,v2' in got['argv']
    assert f'--coordinator_address=127.0.0.1:{env["PORT"]}' in got['argv']
  assert [a[0] for a in _recorded(tools['log'], 'ssh')] == ['127.0.0.1'] * 4


def test_multinode_script_stops_on_a_failure_with_its_status(tools):
  env = dict(tools['env'], HOSTS='h0 h1', WORKDIR='/nfs/t', REMOTE_DIR=ROOT,
             REMOTE_PYTHON=tools['python'], PROBE_EXITS='3')
  assert _run('multinode.sh', env).returncode == 3
  assert len(_records(tools['probe'])) == 2  # not started again


def test_tpu_vm_script_runs_on_all_workers_and_resumes_after_42(tools):
  env = dict(tools['env'], TPU='v4-32', ZONE='us-central2-b', PROJECT='p',
             WORKDIR='gs://bucket/run', REMOTE_DIR=ROOT, REMOTE_PYTHON=tools['python'],
             PROBE_EXITS='42,0')
  out = _run('tpu_vm.sh', env, 'train', '--config.mesh_fsdp=8',
             '--config.wandb_project=my project')
  assert out.returncode == 0, out.stderr[-2000:]
  (ssh,) = _recorded(tools['log'], 'gcloud')
  assert ssh[:7] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'v4-32', '--zone=us-central2-b',
                     '--project=p'] and '--worker=all' in ssh
  runs = _records(tools['probe'])
  assert sorted(runs) == ['p0_0', 'p0_1']  # exit 42, then the same command again
  assert runs['p0_1']['argv'][1:] == [
      '--config=configs/efficientnet_b3.py', '--workdir=gs://bucket/run', '--distributed',
      '--config.mesh_fsdp=8', '--config.wandb_project=my project']  # quoting survives ssh


def test_xpk_script_requests_the_slices_and_restarts_on_42(tools):
  env = dict(tools['env'], CLUSTER='c', WORKLOAD='b3-run', NUM_SLICES='4',
             TPU_TYPE='v5litepod-256', WORKDIR='gs://bucket/run')
  out = _run('xpk_multislice.sh', env, '--config.mesh_fsdp=16')
  assert out.returncode == 0, out.stderr[-2000:]
  (args,) = _recorded(tools['log'], 'xpk')
  assert args[:2] == ['workload', 'create']
  assert {'--cluster=c', '--workload=b3-run', '--tpu-type=v5litepod-256', '--num-slices=4',
          '--max-restarts=10', '--termination-grace-period-seconds=300'} <= set(args)
  command = [a for a in args if a.startswith('--command=')][0]
  (flags,) = main_invocations(command)
  assert flags == ['--config=configs/efficientnet_b3.py', '--workdir=gs://bucket/run',
                   '--distributed', '--config.mesh_fsdp=16']
  assert flag_problems(flags) == []


@pytest.mark.multiprocess
def test_slurm_script_trains_two_processes_with_data_across_nodes(tools, digits_dir, tmp_path):
  """The whole path: sbatch script -> srun -> two main.py processes found by JAX's Slurm
  detection, 2 simulated devices each, data across the two "nodes", fsdp inside each."""
  job_id = str(_free_port(61440, 65535) - 61440 + 4096 * 9)
  workdir = str(tmp_path / 'run')
  env = dict(tools['env'], WORKDIR=workdir, PYTHON=sys.executable,
             CONFIG='tests/helpers/tiny_config.py', SLURM_JOB_ID=job_id, SLURM_NTASKS='2',
             SLURM_JOB_NODELIST='localhost', SLURM_JOB_NUM_NODES='2', SLURM_SUBMIT_DIR=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  out = _run('slurm.sbatch', env, f'--config.data_dir={digits_dir}', '--config.mesh_fsdp=2',
             '--config.num_train_steps=3', timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'mesh: data 2 x fsdp 2 (4 devices)' in out.stderr
  assert 'final eval: top1' in out.stdout
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  assert _recorded(tools['log'], 'scontrol') == []
