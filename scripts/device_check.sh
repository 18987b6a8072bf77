#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): on a machine with a GPU, within 8 minutes,
# the device tests, the train step against compiled PyTorch (float32, TF32, bfloat16), a
# synthetic-data run with a profile and the records' end-to-end ratio, into one JSON
# (benchmarks/results/device_check.json). Uses what is installed; needs no network.
# Pure-Python wheels in .whl/ (ml_collections, for a machine that lacks it: docs/benchmarks.md,
# "The device check") are installed into a temporary folder first.
#
#   scripts/device_check.sh [--out FILE] [--workdir DIR]
#   scripts/device_check.sh --dry-run      # tiny sizes on any device: that it starts
#
# PYTHON: the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G '.whl/*.whl' > /dev/null; then
  site="$(mktemp -d)"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" -m benchmarks.device_check "$@"
