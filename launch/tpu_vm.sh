#!/usr/bin/env bash
# One Cloud TPU VM slice (v4-32, v5p-64, v5litepod-16, v6e-64, ...): the same command on every
# worker; `--distributed` lets JAX find the workers itself.
#
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh setup
#   TPU=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/runs/b3 launch/tpu_vm.sh train \
#       --config.data_dir=gs://my-bucket/tfds --config.mesh_fsdp=8
#
# setup copies this checkout to every worker and installs it with jax[tpu]; train runs
# main.py on every worker. WORKDIR is a gs:// bucket every worker writes to (checkpoints, the
# lock, TensorBoard events). Exit 42 (a maintenance event or SIGTERM: checkpoint written) runs
# the command again on the same VM, which resumes; if the VM itself was preempted, rerun
# `train` on the new one. Environment: PROJECT (gcloud project), CONFIG, REMOTE_DIR (the
# checkout on the workers), GCLOUD and REMOTE_PYTHON (for tests).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
CONFIG=${CONFIG:-configs/efficientnet_b3.py}
REMOTE_DIR=${REMOTE_DIR:-senet_jax}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
GCLOUD=${GCLOUD:-gcloud}
project=()
if [ -n "${PROJECT:-}" ]; then project=(--project="$PROJECT"); fi

on_all_workers() {
  "$GCLOUD" compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" "${project[@]}" --worker=all \
    --command="$1"
}

case "${1:-}" in
  setup)
    tar czf /tmp/senet_jax.tgz --exclude=.venv --exclude=.git --exclude='*.pyc' .
    "$GCLOUD" compute tpus tpu-vm scp /tmp/senet_jax.tgz "$TPU": --zone="$ZONE" "${project[@]}" \
      --worker=all
    on_all_workers "mkdir -p $REMOTE_DIR && tar xzf senet_jax.tgz -C $REMOTE_DIR && \
cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]'"
    ;;
  train)
    shift
    : "${WORKDIR:?set WORKDIR=gs://bucket/path, shared by every worker}"
    extra=$(printf ' %q' "$@")
    on_all_workers "cd $REMOTE_DIR && until $REMOTE_PYTHON main.py --config=$CONFIG \
--workdir=$WORKDIR --distributed$extra; status=\$?; [ \$status -ne 42 ]; do \
echo 'preempted with a checkpoint written: resuming'; done; exit \$status"
    ;;
  *)
    echo "usage: TPU=... ZONE=... [WORKDIR=gs://...] $0 setup|train [main.py flags]" >&2
    exit 2
    ;;
esac
