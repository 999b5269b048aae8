#!/usr/bin/env bash
# Accelerator check (issue 14): environment, CPU-vs-device losses, the benchmark suite at batch
# 128, a 10-task PMI run extrapolated from its first task; at most 8 minutes. `--tiny`: CPU, CI.
#   bash benchmarks/device_check.sh [--out DIR] [--budget-s 480] [--tiny]   (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.device_check "$@"
