#!/usr/bin/env bash
# The main job on the embedded default: bundled reference model -> ONNX FP32 + FP16 + INT8 (calibrated on the
# shipped synthetic set) -> benchmark table (latency on this CPU with ONNX Runtime and OpenVINO side by side;
# accuracy on FER-2013 PublicTest when ../shared has it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh export,openvino
. .venv/bin/activate
fer-export --fp16 --int8 --out fer-artifacts
data=()
publictest=../shared/data/fer2013/fer2013_publictest.npz
if [ -f "$publictest" ]; then
  data=(--data "$publictest")
else
  echo "note: $publictest not found: benchmarking latency only (pass --data to add accuracy)"
fi
fer-bench fer-artifacts/*_fp32.onnx fer-artifacts/*_fp16.onnx fer-artifacts/*_int8.onnx "${data[@]}" \
  --backend onnxruntime,openvino --threads 2 --report fer-artifacts/report
