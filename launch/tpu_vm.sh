#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice (e.g. v5litepod-16: 4 hosts): the same command on
# every host; jax.distributed reads the slice's layout from the TPU metadata.
#   TPU_NAME=my-slice ZONE=us-west4-a ./launch/tpu_vm.sh --num_steps=20000
# WORKDIR must be a filesystem every host mounts (e.g. a Filestore NFS share): the trainer's
# workdir is a local path (gs:// is not supported yet).
set -euo pipefail

TPU_NAME="${TPU_NAME:?set TPU_NAME to the TPU VM's name}"
ZONE="${ZONE:?set ZONE to the TPU VM's zone}"
WORKDIR="${WORKDIR:-/mnt/shared/runs/rnn-train}"
FLAGFILE="${FLAGFILE:-configs/tiny_shakespeare.flags}"
REPO_DIR="${REPO_DIR:-\$HOME/rnn-at-scale}"  # where the repository is checked out on every host

extra_flags=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  cd $REPO_DIR
  pip install -q -e . 'jax[tpu]'
  python -m training.train --workdir=$WORKDIR --flagfile=$FLAGFILE$extra_flags
"
