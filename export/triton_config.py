"""`config.pbtxt` of one model in a Triton model repository, as protobuf text of `inference.ModelConfig`.

Plain text on purpose: writing a repository needs no tritonclient; the tests parse every config with
tritonclient's model_config_pb2, so a misspelt field fails there. Field meanings: Triton's model_config.proto.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

# numpy / contract dtype names and TensorRT tensor dtype names -> Triton DataType.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                 "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
                 "FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8",
                 "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass
class TensorConfig:
    name: str
    data_type: str                  # a TRITON_DTYPES value
    dims: List[int]                 # without the batch axis (max_batch_size > 0)
    label_filename: Optional[str] = None


@dataclass
class ModelConfigSpec:
    name: str
    max_batch_size: int
    input: TensorConfig
    output: TensorConfig
    platform: Optional[str] = None          # "onnxruntime_onnx" | "tensorrt_plan"
    backend: Optional[str] = None           # "python"
    preferred_batch_sizes: List[int] = field(default_factory=list)
    queue_delay_us: int = 0
    instances: int = 1
    kind: str = "KIND_AUTO"
    cuda_graphs: bool = False               # TensorRT plans
    gpu_accelerator: Optional[Dict[str, str]] = None   # ONNX Runtime's TensorRT execution provider and its parameters
    parameters: Dict[str, str] = field(default_factory=dict)
    comments: List[str] = field(default_factory=list)


def quote(text: str) -> str:
    """A protobuf text-format string literal (JSON in a string parameter keeps its quotes and backslashes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(t: TensorConfig) -> List[str]:
    lines = ["  {", f"    name: {quote(t.name)}", f"    data_type: {t.data_type}",
             f"    dims: [ {', '.join(str(d) for d in t.dims)} ]"]
    if t.label_filename:
        lines.append(f"    label_filename: {quote(t.label_filename)}")
    return lines + ["  }"]


def render_config(spec: ModelConfigSpec) -> str:
    lines = [f"# {c}" for c in spec.comments]
    lines.append(f"name: {quote(spec.name)}")
    if spec.platform:
        lines.append(f"platform: {quote(spec.platform)}")
    if spec.backend:
        lines.append(f"backend: {quote(spec.backend)}")
    lines.append(f"max_batch_size: {spec.max_batch_size}")
    lines += ["input ["] + _tensor(spec.input) + ["]", "output ["] + _tensor(spec.output) + ["]"]
    if spec.max_batch_size > 1:     # with at most one face per execution there is nothing to batch
        lines.append("dynamic_batching {")
        if spec.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in spec.preferred_batch_sizes)} ]")
        lines += [f"  max_queue_delay_microseconds: {spec.queue_delay_us}", "}"]
    lines += ["instance_group [", f"  {{ count: {spec.instances} kind: {spec.kind} }}", "]"]
    optimization = ["  cuda { graphs: true }"] if spec.cuda_graphs else []
    if spec.gpu_accelerator is not None:
        optimization += ["  execution_accelerators {", "    gpu_execution_accelerator: [", "      {",
                         f"        name: {quote('tensorrt')}"]
        optimization += [f"        parameters {{ key: {quote(k)} value: {quote(v)} }}"
                         for k, v in spec.gpu_accelerator.items()]
        optimization += ["      }", "    ]", "  }"]
    if optimization:
        lines += ["optimization {"] + optimization + ["}"]
    for key, value in spec.parameters.items():
        lines.append(f"parameters {{ key: {quote(key)} value: {{ string_value: {quote(value)} }} }}")
    return "\n".join(lines) + "\n"
