#!/usr/bin/env bash
# Several hosts without a scheduler JAX detects: start one process per host over ssh, naming
# the coordinator (the first host) explicitly.
#
#   HOSTS="10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4" WORKDIR=/nfs/runs/b3 launch/multinode.sh \
#       --config.data_dir=/nfs/tfds --config.mesh_fsdp=8
#
# Each host needs this checkout at REMOTE_DIR (default: the same path as here) with its
# environment, and WORKDIR on a file system all of them mount (or a gs:// bucket). When the
# processes exit 42 (preempted, checkpoint written) the whole group is started again and
# resumes; any other failure ends the script with the highest status. To start each host by hand
# instead, run on host i:
#   python main.py --config=... --workdir=... --coordinator_address=10.0.0.1:12355 \
#       --num_processes=4 --process_id=i
# Environment: PORT, CONFIG, REMOTE_DIR, REMOTE_PYTHON, SSH (for tests).
set -uo pipefail
: "${HOSTS:?set HOSTS to the hosts, the coordinator first}" "${WORKDIR:?set WORKDIR}"
read -r -a hosts <<< "$HOSTS"
PORT=${PORT:-12355}
CONFIG=${CONFIG:-configs/efficientnet_b3.py}
REMOTE_DIR=${REMOTE_DIR:-$PWD}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
SSH=${SSH:-ssh}
extra=$(printf ' %q' "$@")

# The group's status: 42 when the processes stopped for preemption, else the highest other.
run_group() {
  local pids=() i rc worst=0 preempted=0
  for i in "${!hosts[@]}"; do
    "$SSH" "${hosts[$i]}" "cd $REMOTE_DIR && $REMOTE_PYTHON main.py --config=$CONFIG \
--workdir=$WORKDIR --coordinator_address=${hosts[0]}:$PORT --num_processes=${#hosts[@]} \
--process_id=$i$extra" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?
    if [ "$rc" -eq 42 ]; then preempted=1; elif [ "$rc" -gt "$worst" ]; then worst=$rc; fi
  done
  if [ "$worst" -gt 0 ]; then return "$worst"; fi
  if [ "$preempted" -eq 1 ]; then return 42; fi
  return 0
}

while true; do
  run_group; status=$?
  if [ "$status" -ne 42 ]; then exit "$status"; fi
  echo 'preempted with a checkpoint written: starting the group again'
done
