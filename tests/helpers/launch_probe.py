"""Stands in for `python` in the launch scripts' tests: `probe main.py --flags...`.

Records what the script ran (argv, working directory) and, when PROBE_INIT says 1, connects the
processes the way main.py would: `--coordinator_address/--num_processes/--process_id`, or
`--distributed` (jax.distributed.initialize() auto-detection, e.g. from Slurm's variables),
then gathers every process index over the connection. Writes one JSON file per invocation into
PROBE_DIR and exits with the next status of PROBE_EXITS. PROBE_INIT and PROBE_EXITS are comma
separated, one entry per run of a process id (the last repeats): a test can make the first run
connect and be "preempted" (42) and the second finish (0) without connecting again.
"""
import json
import os
import sys


def flag(argv, name):
  for arg in argv:
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def connect(argv) -> dict:
  import jax
  import numpy as np
  if flag(argv, 'coordinator_address'):
    jax.distributed.initialize(coordinator_address=flag(argv, 'coordinator_address'),
                               num_processes=int(flag(argv, 'num_processes')),
                               process_id=int(flag(argv, 'process_id')))
  elif '--distributed' in argv:
    jax.distributed.initialize()
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(np.asarray(jax.process_index()))
  return {'process_index': jax.process_index(), 'process_count': jax.process_count(),
          'device_count': jax.device_count(), 'gathered': np.ravel(gathered).tolist()}


def main(argv):
  out = os.environ['PROBE_DIR']
  pid = flag(argv, 'process_id') or os.environ.get('SLURM_PROCID', '0')
  runs = len([f for f in os.listdir(out) if f.startswith(f'p{pid}_')])
  record = {'argv': argv, 'cwd': os.getcwd(), 'main_exists': os.path.exists(argv[0]),
            'run': runs}
  inits = os.environ.get('PROBE_INIT', '0').split(',')
  if inits[min(runs, len(inits) - 1)] == '1':
    record.update(connect(argv))
  with open(os.path.join(out, f'p{pid}_{runs}.json'), 'w') as f:
    json.dump(record, f)
  exits = os.environ.get('PROBE_EXITS', '0').split(',')
  sys.stdout.flush()
  os._exit(int(exits[min(runs, len(exits) - 1)]))  # as main.py: no distributed shutdown wait


if __name__ == '__main__':
  main(sys.argv[1:])
