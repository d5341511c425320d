#!/usr/bin/env bash
# Create ./.venv with fer-edge and the extras named in $1 (default: export,test).
# torch is pinned to the CPU build first: unpinned, pip would pull several GB of CUDA wheels,
# and torchvision must match it (timm imports torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.13.0" "torchvision==0.28.0"
# strict: a link tree that IDEs and import checkers resolve like an installed package (new modules need a rerun).
python -m pip install -q -e ".[${extras}]" --config-settings editable_mode=strict
