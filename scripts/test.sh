#!/usr/bin/env bash
# The test command: set up ./.venv (CPU torch, export + test extras) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export,test,trt-rtx
. .venv/bin/activate
python -m pytest -q -ra "$@"
