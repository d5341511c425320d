#!/usr/bin/env bash
# The test command: set up ./.venv (CPU torch; export, train, test, trt-rtx, openvino and triton extras) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export,train,test,trt-rtx,openvino,triton
. .venv/bin/activate
python -m pytest -q -ra "$@"
