"""Which precision each layer of a built TensorRT engine runs in, from TensorRT's engine inspector, and whether
that is what the INT8 ONNX asked for: INT8 where it is quantized, FP16 everywhere else, no FP32 compute.

The inspector's JSON (`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`) lists
{"Layers": [...], "Bindings": [...]}. With ProfilingVerbosity.DETAILED each layer is an object with "Name" (the
ONNX node names it fused, joined by " + "), "LayerType", "Inputs"/"Outputs" (each with "Name" and
"Format/Datatype", e.g. "Row major linear FP32", "Channel major FP16 format where channel % 8 == 0",
"Thirty-two wide channel vectorized row major Int8 format") and, for convolutions and matmuls, "Weights":
{"Type": "Int8" | "Half" | "Float", "Count": n}. Without DETAILED, "Layers" is a list of names only.
(Format as in NVIDIA's trt-engine-explorer samples and parser: tools/experimental/trt-engine-explorer.)
"""
from __future__ import annotations

import json
import re
from typing import Dict, Iterable, List, Optional, Union

# Words TensorRT uses for a tensor's element type in "Format/Datatype" (long formats and kgen short names).
_TYPE_WORDS = {"FP32": "fp32", "Float": "fp32", "FP16": "fp16", "Half": "fp16", "Int8": "int8", "INT8": "int8",
               "BFloat16": "bf16", "FP8": "fp8", "Int32": "int32", "INT32": "int32", "Int64": "int64",
               "UInt8": "uint8", "Bool": "bool", "BOOL": "bool"}
_TYPE_RE = re.compile(r"\b(" + "|".join(sorted(_TYPE_WORDS, key=len, reverse=True)) + r")\b")
WEIGHT_TYPES = {"Int8": "int8", "Half": "fp16", "FP16": "fp16", "Float": "fp32", "FP32": "fp32"}


class InspectorFormatError(ValueError):
    """The inspector output cannot say which precision the layers run in."""


def engine_information(engine, trt) -> Dict[str, object]:
    """The whole engine's layer information as JSON (needs a deserialised engine, i.e. a GPU)."""
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def tensor_type(format_datatype: str) -> Optional[str]:
    """'Channel major FP16 format where channel % 8 == 0' -> 'fp16'; None when no type word is found."""
    match = _TYPE_RE.search(format_datatype or "")
    return _TYPE_WORDS[match.group(1)] if match else None


def layer_precision_problems(info: Union[str, Dict[str, object]], int8_nodes: Iterable[str],
                             float_nodes: Iterable[str]) -> List[str]:
    """How an INT8 engine's layers contradict its ONNX ([] when they fit).

    int8_nodes / float_nodes: ONNX names of the weighted layers (Conv, Gemm) that read Q/DQ (INT8) and that stay
    float (kept by the gate or by the recipe: FP16). Rules:
    - no layer reads or writes an FP32 tensor, except the engine's own FP32 input and output bindings;
    - a layer with weights is INT8 when it fused an INT8 node, FP16 when it fused only float nodes, never FP32.
    """
    if isinstance(info, str):
        info = json.loads(info)
    layers, bindings = info.get("Layers"), set(info.get("Bindings") or [])
    if not isinstance(layers, list) or not layers:
        raise InspectorFormatError("the engine inspector listed no layers")
    if not all(isinstance(layer, dict) for layer in layers):
        raise InspectorFormatError("the engine inspector gave layer names only: the engine was built without "
                                   "ProfilingVerbosity.DETAILED, so its layer precisions cannot be read; build it "
                                   "with detailed profiling (BuildOptions.detailed_profiling) and run again")
    int8_nodes, float_nodes = set(int8_nodes), set(float_nodes)
    problems = []
    for layer in layers:
        name = str(layer.get("Name", "?"))
        tensors = [t for t in list(layer.get("Inputs") or []) + list(layer.get("Outputs") or [])
                   if t.get("Name") not in bindings]
        fp32 = [t.get("Name") for t in tensors if tensor_type(t.get("Format/Datatype", "")) == "fp32"]
        if fp32:
            problems.append(f"{name} ({layer.get('LayerType')}) computes in FP32: tensors {fp32[:3]}")
        weights = layer.get("Weights")
        if not isinstance(weights, dict):
            continue
        fused = set(name.split(" + "))
        got = WEIGHT_TYPES.get(str(weights.get("Type")), str(weights.get("Type")))
        want = "int8" if fused & int8_nodes else "fp16" if fused & float_nodes else None
        if got == "fp32" or (want is not None and got != want):
            problems.append(f"{name}: weights are {got}, expected {want or 'int8 or fp16'}")
    return problems
