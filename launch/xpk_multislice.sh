#!/usr/bin/env bash
# Multi-slice TPU training on GKE with XPK: NUM_SLICES slices of TPU_TYPE in one JobSet. The
# data axis spans the slices over the data-centre network, fsdp stays inside a slice's ICI
# (config.mesh_dcn_data=-1, the default, reads the slices from the devices).
#
#   CLUSTER=my-cluster TPU_TYPE=v5litepod-256 NUM_SLICES=2 WORKDIR=gs://my-bucket/runs/b3 \
#       launch/xpk_multislice.sh --config.data_dir=gs://my-bucket/tfds --config.mesh_fsdp=16
#
# xpk builds an image from this directory (--script-dir) on its JAX TPU base image. Exit 42
# (preemption, checkpoint written) restarts the JobSet -- xpk restarts on 42 by default when
# --max-restarts > 0 -- and the trainer resumes from WORKDIR (a gs:// bucket). The grace
# period gives the SIGTERM'd trainer time to write that checkpoint. Environment: WORKLOAD,
# CONFIG, MAX_RESTARTS, GRACE_SECONDS, XPK (for tests).
set -euo pipefail
: "${CLUSTER:?set CLUSTER to the GKE cluster}" "${WORKDIR:?set WORKDIR=gs://bucket/path}"
TPU_TYPE=${TPU_TYPE:-v5litepod-256}
NUM_SLICES=${NUM_SLICES:-2}
WORKLOAD=${WORKLOAD:-senet-$(date +%m%d-%H%M%S)}
CONFIG=${CONFIG:-configs/efficientnet_b3.py}
MAX_RESTARTS=${MAX_RESTARTS:-10}
GRACE_SECONDS=${GRACE_SECONDS:-300}
XPK=${XPK:-xpk}
extra=$(printf ' %q' "$@")

"$XPK" workload create --cluster="$CLUSTER" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE" \
  --num-slices="$NUM_SLICES" --max-restarts="$MAX_RESTARTS" \
  --termination-grace-period-seconds="$GRACE_SECONDS" --script-dir=. \
  --command="pip install -q -r requirements.txt && python3 main.py --config=$CONFIG \
--workdir=$WORKDIR --distributed$extra"
