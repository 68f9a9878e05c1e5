#!/usr/bin/env bash
# GPU acceptance in one command: CUDA tests, benchmarks, time to accuracy, DDP over NCCL and two studies, each
# time-boxed within --budget seconds; results in DIR/summary.md and DIR/summary.json (see scripts/gpu_acceptance.py).
#
#   bash scripts/gpu_acceptance.sh --out DIR [--budget SECONDS] [--wheels DIR] [--data PATH] [--smoke]
#
# PYTHON=... picks the interpreter (default: python3, the one that has torch). Relative paths are taken from where
# the command is typed. Exit codes: 0 every step passed (targets may still be missed: read the summary), 1 a step
# failed or ran out of time, 2 a usage error or no CUDA device, 130 stopped by a signal (the summary so far is
# written).
set -euo pipefail
PY="${PYTHON:-python3}"
command -v "$PY" > /dev/null || { echo "error: no Python at PYTHON=$PY. Fix: PYTHON=/path/to/python3 (the one with torch)." >&2; exit 2; }
exec "$PY" "$(dirname "$0")/gpu_acceptance.py" "$@"
