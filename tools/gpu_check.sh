#!/usr/bin/env bash
# One call proves rv2's GPU paths on a lent GPU machine; see docs/gpu-check.md.
#   tools/gpu_check.sh                 # on the GPU machine: summaries go to $OUT
#   tools/gpu_check.sh --dry-run       # here: every step's CPU half (CI runs this)
# Options are those of tools/gpu_check.py (--help). PYTHON picks the interpreter;
# default: the repository's .venv if there is one, else python3 (the GPU image's torch).
set -u
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec "$PYTHON" tools/gpu_check.py "$@"
