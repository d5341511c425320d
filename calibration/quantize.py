"""FP32 ONNX + activation ranges -> INT8 Q/DQ ONNX via ONNX Runtime's quantize_static.

Target "tensorrt": the option set NVIDIA's TensorRT Model Optimizer (ModelOpt) passes to ORT: symmetric int8
activations and weights (zero point 0), per-channel weight scales on axis 0, Q/DQ pairs on float weights,
float bias, no output quantization, and only Conv/Gemm/Add inputs quantized so Conv+SiLU stays fusible.
A post-pass removes the Q/DQ that ORT puts between a Conv and a residual Add, leaving it only on the
skip input, so TensorRT can fuse the Add into the conv epilogue. Tiny layers stay float (`float_by_recipe`: the
squeeze-excite 1x1 convs on pooled tensors and a classifier Gemm with < 16 outputs), and everything not quantized
becomes FP16 (`fp16_graph`), so a strongly typed TensorRT build runs INT8+FP16, not INT8+FP32.

Target "cpu": uint8 asymmetric activations, which ORT's CPU kernels run as QLinearConv; not TensorRT-legal.

Ranges are computed here rather than by quantize_static, because quantize_static silently runs Entropy
with 128 bins whatever bin count is asked for: we create the calibrator with 2048 bins and hand the ranges back as an
ORT calibration cache.
"""
from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from fer_edge.calibration import fp16_graph
from fer_edge.calibration.sensitivity import group_name
from fer_edge.runtime.errors import FerEdgeError

CALIBRATION_METHODS = ("entropy", "max", "percentile")
TARGETS = ("tensorrt", "cpu")
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "Add")
RECIPE = "conv-gemm-add/v1"  # bump when the calibrated tensor set changes (part of the cache key)
CALIB_BATCH = 32
FLOAT_DTYPES = ("float16", "float32")
MIN_GEMM_OUTPUTS = 16  # ModelOpt (>= 0.44) also keeps a Gemm/MatMul with fewer outputs in float
POOLING_OPS = ("ReduceMean", "GlobalAveragePool")
WEIGHTED_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class TrtRecipe:
    """The tensorrt target's choices, both measured in docs/int8.md (the cpu target ignores them).

    float_dtype "float32" is the earlier graph (opset 17, FP32 scales and islands): the one TensorRT 8.6
    (JetPack 6.0) can parse, where the weakly typed INT8+FP16 build makes the islands FP16 anyway."""
    float_dtype: str = "float16"
    float_small_layers: bool = True

    def validate(self) -> "TrtRecipe":
        if self.float_dtype not in FLOAT_DTYPES:
            raise FerEdgeError(f"INT8 float type {self.float_dtype!r}: choose one of {FLOAT_DTYPES}")
        return self


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
             exclude: Iterable[str] = (), target: str = "tensorrt", recipe: TrtRecipe = TrtRecipe()) -> bytes:
    """One INT8 model from cached ranges; `exclude` names nodes kept in float (the recipe's own are added)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    if target not in TARGETS:
        raise FerEdgeError(f"--int8-target {target!r}: choose one of {TARGETS}")
    recipe.validate()
    fp16 = target == "tensorrt" and recipe.float_dtype == "float16"
    if fp16:
        _check_fp16_ranges(ranges)
    exclude = list(exclude)
    if target == "tensorrt" and recipe.float_small_layers:
        exclude += [name for name in float_by_recipe(fp32_onnx) if name not in exclude]
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
    if fp16:
        try:
            proto = fp16_graph.to_fp16(proto)
        except fp16_graph.Fp16GraphError as exc:
            raise QuantizationError(f"{exc}. Export with the float32 recipe (TrtRecipe(float_dtype='float32')) and "
                                    "report the model to fer-edge") from None
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _check_fp16_ranges(ranges: Dict[str, Tuple[float, float]]) -> None:
    """Calibrated activations beyond FP16's range would become inf in the FP16 graph: refuse them by name."""
    over = sorted((max(abs(lo), abs(hi)), name) for name, (lo, hi) in ranges.items()
                  if max(abs(lo), abs(hi)) > fp16_graph.FP16_MAX)
    if over:
        peak, name = over[-1]
        raise QuantizationError(f"{len(over)} calibrated activation(s) exceed FP16's range ({fp16_graph.FP16_MAX:g}), "
                                f"e.g. {name} reaches {peak:.4g}: the FP16 parts of the INT8 graph would overflow. "
                                "Export with the float32 recipe (TrtRecipe(float_dtype='float32')) or retrain with "
                                "smaller activations")


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


def quantizable_nodes(fp32_onnx: bytes, target: str = "tensorrt",
                      recipe: TrtRecipe = TrtRecipe()) -> List[Tuple[str, str]]:
    """(node name, op type) of every node this recipe may quantize, in graph order (what the gate may give back)."""
    import onnx
    proto = onnx.load_from_string(fp32_onnx)
    kept = float_by_recipe(fp32_onnx) if target == "tensorrt" and recipe.float_small_layers else {}
    return [(n.name, n.op_type) for n in proto.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.name not in kept]


def float_by_recipe(fp32_onnx: bytes) -> Dict[str, str]:
    """Node name -> why it stays float: layers too small for INT8 to pay for its Q/DQ and reformats.

    - a 1x1 Conv on a globally pooled tensor (squeeze-excite: a GEMV per image), found structurally: it reads,
      through pooled-only ops, the output of a ReduceMean/GlobalAveragePool;
    - a Gemm with fewer than MIN_GEMM_OUTPUTS outputs (a 7-class classifier).
    """
    import onnx
    graph = onnx.load_from_string(fp32_onnx).graph
    inits = {t.name: t for t in graph.initializer}
    pooled = set()  # tensors computed only from globally pooled tensors and constants
    reasons: Dict[str, str] = {}
    for node in graph.node:  # ONNX graphs are topologically sorted
        data = [i for i in node.input if i and i not in inits]
        if node.op_type in POOLING_OPS or (data and all(i in pooled for i in data)):
            pooled.update(node.output)
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue
        if node.op_type == "Conv" and node.input[0] in pooled and list(weight.dims[2:]) == [1, 1]:
            reasons[node.name] = "1x1 conv on a pooled 1x1 tensor (squeeze-excite)"
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            outputs = weight.dims[0 if trans_b else 1]
            if outputs < MIN_GEMM_OUTPUTS:
                reasons[node.name] = f"Gemm with {outputs} outputs (< {MIN_GEMM_OUTPUTS})"
    return reasons


def int8_layers(qdq_onnx: bytes) -> "OrderedDict[str, bool]":
    """Weighted layer (Conv, Gemm) name -> True when its input and weight come out of DequantizeLinear (INT8)."""
    import onnx
    graph = onnx.load_from_string(qdq_onnx).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return OrderedDict((node.name, all(producer.get(i) == "DequantizeLinear" for i in node.input[:2]))
                       for node in graph.node if node.op_type in WEIGHTED_OPS)


def precision_mix(qdq_onnx: bytes, float_dtype: str) -> Dict[str, object]:
    """What of an INT8 Q/DQ graph really is INT8, read from the graph (`int8_layers`). A block (stem, blocks.N.M,
    head, classifier) is float when none of its weighted layers is INT8. Recorded in the contract
    (`precision_mix`) and shown by fer-bench."""
    blocks: "OrderedDict[str, List[bool]]" = OrderedDict()
    for name, int8 in int8_layers(qdq_onnx).items():
        blocks.setdefault(group_name(name), []).append(int8)
    float_blocks = [name for name, flags in blocks.items() if not any(flags)]
    layers = [flag for flags in blocks.values() for flag in flags]
    return {"float_dtype": float_dtype, "float_blocks": float_blocks, "blocks": len(blocks),
            "float_share": round(len(float_blocks) / max(len(blocks), 1), 4),
            "int8_layers": sum(layers), "float_layers": len(layers) - sum(layers)}


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
