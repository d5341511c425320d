"""The TensorRT-target INT8 graph with FP16 everywhere it is not INT8, and FP32 graph I/O.

Under strong typing (TensorRT >= 9.1, every 10.x and 11.x) a DequantizeLinear's output type is its scale's
type, so a Q/DQ graph with FP32 scales runs everything that is not quantized (squeeze-excite chains, residual
Adds, SiLUs, pooling, the blocks the gate kept in float) in FP32. Here the quantized graph moves to opset 19, the
first whose Q/DQ take FP16 scales (TensorRT 10.3 parses up to 20; TensorRT 8.6 only up to 17), and every float
weight, bias, scale and activation becomes FP16; one Cast after the input and one before the output keep the
graph's I/O FP32. This is what ModelOpt's INT8 export gives by default (`--high_precision_dtype fp16`).
"""
from __future__ import annotations

import warnings
from typing import Dict, List

OPSET = 19
FP16_MAX = 65504.0
# Smallest positive FP16 (a subnormal). The converter raises smaller magnitudes to this, so no Q/DQ scale
# becomes 0 (which Q/DQ forbids); it only touches scales of channels whose weights are all below ~7.6e-6.
FP16_TINY = 2.0 ** -24


class Fp16GraphError(RuntimeError):
    """The FP16 conversion left FP32 compute in the graph (a bug: the caller turns it into a clear error)."""


def to_fp16(proto):
    """The Q/DQ model at opset 19 with FP16 scales, weights, biases and activations; FP32 input and output."""
    import onnx
    from onnx import version_converter
    from onnxconverter_common import float16
    if _opset(proto) < OPSET:
        # 17 -> 19 changes only the Reduce* ops here (axes move from an attribute to an input).
        proto = version_converter.convert_version(proto, OPSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxconverter-common warns about every value it clamps
        # Clamp to FP16's own range: the converter's defaults (1e-7, 1e4) would rewrite weights above 1e4.
        proto = float16.convert_float_to_float16(proto, min_positive_val=FP16_TINY, max_finite_val=FP16_MAX,
                                                 keep_io_types=True)
    onnx.checker.check_model(proto)
    left = float32_compute(proto)
    if left:
        raise Fp16GraphError(f"FP32 compute left after the FP16 conversion: {left[:5]}")
    return proto


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def tensor_types(proto) -> Dict[str, int]:
    """Element type (onnx.TensorProto enum) of every tensor the graph names, by ONNX type inference."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:  # Constant nodes: their value's type
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                types[node.output[0]] = attr.t.data_type
    return types


def float32_compute(proto) -> List[str]:
    """Nodes that read or write an FP32 (or untyped) tensor, other than the Cast after the graph input and the
    Cast before the graph output: [] means everything between those two casts is INT8, FP16 or integer."""
    from onnx import TensorProto
    types = tensor_types(proto)
    graph = proto.graph
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    found = []
    for node in graph.node:
        edge_cast = node.op_type == "Cast" and (set(node.input) & inputs or set(node.output) & outputs)
        if edge_cast:
            continue
        names = [n for n in list(node.input) + list(node.output) if n]
        if any(types.get(n, TensorProto.UNDEFINED) in (TensorProto.FLOAT, TensorProto.UNDEFINED) for n in names):
            found.append(node.name or node.op_type)
    return found
