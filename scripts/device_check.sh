#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): on a machine with a GPU, within 8 minutes,
# the device tests, the train step against compiled PyTorch (float32, TF32, bfloat16), a
# synthetic-data run with a profile and the records' end-to-end ratio, into one JSON
# (benchmarks/results/device_check.json). Uses what is installed; needs no network.
#
#   scripts/device_check.sh [--out FILE] [--workdir DIR]
#   scripts/device_check.sh --dry-run      # tiny sizes on any device: that it starts
#
# PYTHON: the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.device_check "$@"
