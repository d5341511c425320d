"""FP32 ONNX + activation ranges -> INT8 Q/DQ ONNX via ONNX Runtime's quantize_static.

Target "tensorrt": the option set NVIDIA's TensorRT Model Optimizer (ModelOpt) passes to ORT: symmetric int8
activations and weights (zero point 0), per-channel weight scales on axis 0, Q/DQ pairs on float weights,
float bias, no output quantization, and only Conv/Gemm/Add inputs quantized so Conv+SiLU stays fusible.
A post-pass removes the Q/DQ that ORT puts between a Conv and a residual Add, leaving it only on the
skip input, so TensorRT can fuse the Add into the conv epilogue.

Target "cpu": uint8 asymmetric activations, which ORT's CPU kernels run as QLinearConv; not TensorRT-legal.

Ranges are computed here rather than by quantize_static, because quantize_static silently runs Entropy
with 128 bins whatever bin count is asked for: we create the calibrator with 2048 bins and hand the ranges back as an
ORT calibration cache.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from fer_edge.runtime.errors import FerEdgeError

CALIBRATION_METHODS = ("entropy", "max", "percentile")
TARGETS = ("tensorrt", "cpu")
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "Add")
RECIPE = "conv-gemm-add/v1"  # bump when the calibrated tensor set changes (part of the cache key)
CALIB_BATCH = 32


class QuantizationError(FerEdgeError, RuntimeError):
    """ONNX Runtime's quantizer failed on this model."""


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod
    return {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile}[method]


class _BatchReader:
    """ORT CalibrationDataReader over a preprocessed float32 NCHW array, with a progress callback."""

    def __init__(self, input_name: str, tensors: np.ndarray, progress: Optional[Callable[[int], None]] = None):
        self.input_name, self.tensors, self.progress, self.pos = input_name, tensors, progress, 0

    def get_next(self):
        if self.pos >= len(self.tensors):
            return None
        batch = self.tensors[self.pos:self.pos + CALIB_BATCH]
        self.pos += len(batch)
        if self.progress:
            self.progress(len(batch))
        return {self.input_name: batch}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self):
        return len(self.tensors)


def compute_ranges(fp32_onnx: bytes, input_name: str, tensors: np.ndarray, method: str,
                   progress: Optional[Callable[[int], None]] = None) -> Dict[str, Tuple[float, float]]:
    """Activation ranges (symmetric) of every tensor around the quantized op types, on calibration tensors."""
    from onnxruntime.quantization.calibrate import create_calibrator
    if method not in CALIBRATION_METHODS:
        raise FerEdgeError(f"--calib-method {method!r}: choose one of {CALIBRATION_METHODS}")
    options = {"symmetric": True}
    if method == "entropy":
        options.update(num_bins=2048, num_quantized_bins=128)  # quantize_static itself would histogram with 128 bins
    elif method == "percentile":
        options.update(num_bins=2048, percentile=99.999)
    with tempfile.TemporaryDirectory(prefix="fer-calib-") as tmp:
        model_path = Path(tmp) / "fp32.onnx"
        model_path.write_bytes(fp32_onnx)
        calibrator = create_calibrator(model_path, list(QUANTIZED_OP_TYPES),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_ort_method(method), extra_options=options)
        calibrator.collect_data(_BatchReader(input_name, tensors, progress))
        computed = calibrator.compute_data()
        del calibrator
    ranges = {}
    for name, data in computed.data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
        ranges[name] = (lo, hi)
    return ranges


def _tensorrt_options(op_types: Sequence[str]) -> dict:
    return {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
            "AddQDQPairToWeight": True, "DedicatedQDQPair": False,
            "OpTypesToExcludeOutputQuantization": list(op_types),
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1, "Gemm": 0},
            "ForceQuantizeNoInputCheck": True, "QDQDisableWeightAdjustForInt32Bias": True}


def quantize(fp32_onnx: bytes, ranges: Dict[str, Tuple[float, float]], method: str,
             exclude: Iterable[str] = (), target: str = "tensorrt") -> bytes:
    """One INT8 model from cached ranges; `exclude` names nodes kept in float."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    if target not in TARGETS:
        raise FerEdgeError(f"--int8-target {target!r}: choose one of {TARGETS}")
    op_types = list(QUANTIZED_OP_TYPES)
    tensors = TensorsData(_ort_method(method), {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.items()})
    if target == "tensorrt":
        kwargs = dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                      extra_options=_tensorrt_options(op_types))
    else:
        kwargs = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                      extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT warns about "pre-processing" on every call; it does not apply here
    try:
        with tempfile.TemporaryDirectory(prefix="fer-quant-") as tmp:
            src, out, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
            src.write_bytes(fp32_onnx)
            save_tensors_data(tensors, cache)
            quantize_static(str(src), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True, nodes_to_exclude=list(exclude),
                            calibrate_method=_ort_method(method), calibration_cache_path=str(cache), **kwargs)
            proto = onnx.load(str(out))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise QuantizationError(f"ONNX Runtime quantize_static failed: {exc}") from None
    finally:
        root.setLevel(level)
    if target == "tensorrt":
        drop_conv_to_add_qdq(proto)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def drop_conv_to_add_qdq(proto) -> int:
    """Remove Q->DQ between a Conv output and an Add, so TensorRT fuses the Add as the conv's residual epilogue.

    The Add's other (skip) input keeps its Q/DQ. Returns the number of Adds rewired.
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    order = {id(node): i for i, node in enumerate(graph.node)}
    removed = 0
    for add in [n for n in graph.node if n.op_type == "Add"]:
        candidates = []
        for slot, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            source = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if source is not None and source.op_type == "Conv":
                candidates.append((order[id(source)], slot, q.input[0]))
        if candidates:
            # Both inputs can come from convs (this block's project conv and the previous block's): the later
            # conv is this block's own branch and takes the Add as its epilogue; the skip input keeps its Q/DQ.
            _, slot, float_input = max(candidates)
            add.input[slot] = float_input
            removed += 1
    _drop_dead_qdq(graph)
    return removed


def quantizable_nodes(fp32_onnx: bytes) -> List[Tuple[str, str]]:
    """(node name, op type) of every node this recipe may quantize, in graph order."""
    import onnx
    proto = onnx.load_from_string(fp32_onnx)
    return [(n.name, n.op_type) for n in proto.graph.node if n.op_type in QUANTIZED_OP_TYPES]


def keep_in_float(qdq_onnx: bytes, nodes: Iterable[str]) -> bytes:
    """The same Q/DQ model with `nodes` reading float inputs again: what nodes_to_exclude would give, in
    milliseconds instead of a full quantize_static run (used to screen blocks in the gate)."""
    import onnx
    proto = onnx.load_from_string(qdq_onnx)
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    names = set(nodes)
    for node in graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    _drop_dead_qdq(graph)
    return proto.SerializeToString()


def _drop_dead_qdq(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
