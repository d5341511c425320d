"""gpu_check's checks without a GPU: layer precisions from an engine-inspector JSON written by hand in TensorRT's
format, the batch-size sequence and the 8-thread check on fake predictors that fail the way a stale CUDA graph or
an unguarded shared buffer does, and the report's FAIL lines."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fer_edge.benchmarks import serving_checks
from fer_edge.benchmarks.gpu_check import failures
from fer_edge.benchmarks.layer_precisions import InspectorFormatError, layer_precision_problems, tensor_type

PWL = "/blocks/blocks.1/blocks.1.0/conv_pwl/Conv"
SE = "/blocks/blocks.3/blocks.3.0/se/conv_reduce/Conv"
HEAD = "/conv_head/Conv"          # kept in float by the gate in these samples
GEMM = "/classifier/Gemm"


def _tensor(name, fmt, dims=(1, 32, 6, 6)):
    return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format/Datatype": fmt}


def _layer(name, kind, inputs, outputs, weights=None):
    layer = {"Name": name, "LayerType": kind, "Inputs": inputs, "Outputs": outputs, "TacticValue": "0x0"}
    if weights:
        layer.update(ParameterType="Convolution", Weights={"Type": weights, "Count": 1024},
                     Bias={"Type": "Float", "Count": 32})
    return layer


INT8 = "Thirty-two wide channel vectorized row major Int8 format"
HALF = "Channel major FP16 format where channel % 8 == 0"
FP32 = "Row major linear FP32"


def inspector_json(head_weights="Half", se_out=HALF, gemm_weights="Half"):
    """An INT8+FP16 engine as ProfilingVerbosity.DETAILED describes it: the input reformat from the FP32 binding, an
    INT8 conv, a squeeze-excite conv and the gate-kept head in FP16, the classifier writing the FP32 output."""
    return {"Layers": [
        _layer("QuantizeLinear_0", "Reformat", [_tensor("input", FP32, (1, 1, 48, 48))],
               [_tensor("q0", INT8, (1, 1, 48, 48))]),
        _layer(f"{PWL}_weights + QuantizeLinear_7 + {PWL}", "CaskConvolution", [_tensor("q0", INT8)],
               [_tensor("t1", HALF)], weights="Int8"),
        _layer(f"{SE} + /blocks/blocks.3/blocks.3.0/se/act/Sigmoid", "CaskConvolution", [_tensor("t1", HALF)],
               [_tensor("t2", se_out)], weights="Half"),
        _layer("PWN(/blocks/blocks.3/blocks.3.0/se/Mul)", "PointWiseV2", [_tensor("t1", HALF), _tensor("t2", se_out)],
               [_tensor("t3", HALF)]),
        _layer(HEAD, "CaskConvolution", [_tensor("t3", HALF)], [_tensor("t4", HALF)], weights=head_weights),
        _layer(f"{GEMM} + /Cast_1", "CaskGemmConvolution", [_tensor("t4", HALF, (1, 1280))],
               [_tensor("logits", FP32, (1, 7))], weights=gemm_weights),
    ], "Bindings": ["input", "logits"]}


INT8_NODES, FLOAT_NODES = [PWL], [SE, HEAD, GEMM]


def test_tensor_types_from_tensorrt_format_strings():
    assert tensor_type("Row major linear FP32") == "fp32"
    assert tensor_type("Channel major FP16 format where channel % 8 == 0") == "fp16"
    assert tensor_type("Thirty-two wide channel vectorized row major Int8 format") == "int8"
    assert tensor_type("Channel major INT8 format where channel % 16 == 0") == "int8"
    assert tensor_type("Half") == "fp16" and tensor_type("Float") == "fp32" and tensor_type("Int32") == "int32"
    assert tensor_type("Unknown format") is None


def test_an_int8_fp16_engine_passes_the_layer_check():
    assert layer_precision_problems(inspector_json(), INT8_NODES, FLOAT_NODES) == []


def test_fp32_islands_and_fp32_kept_blocks_are_named():
    """What today's FP32-scale ONNX gives under strong typing: the gate-kept head in FP32, FP32 activations."""
    problems = layer_precision_problems(inspector_json(head_weights="Float", se_out=FP32), INT8_NODES, FLOAT_NODES)
    assert any(p.startswith(SE) and "computes in FP32" in p and "t2" in p for p in problems), problems
    assert any(p.startswith("PWN(") and "computes in FP32" in p for p in problems)   # reads t2
    assert any(p.startswith(HEAD) and "weights are fp32, expected fp16" in p for p in problems)
    assert len(problems) == 3


def test_an_int8_layer_that_ran_in_fp16_is_named():
    problems = layer_precision_problems(inspector_json(), [PWL, GEMM], [SE, HEAD])
    assert problems == [f"{GEMM} + /Cast_1: weights are fp16, expected int8"]


def test_an_engine_built_without_detailed_profiling_is_refused_by_name():
    with pytest.raises(InspectorFormatError, match="ProfilingVerbosity.DETAILED"):
        layer_precision_problems({"Layers": ["QuantizeLinear_0", PWL], "Bindings": ["input", "logits"]}, [], [])


# ---------------------------------------------------------------- batch sequence and threads on fake predictors
def _reference(n=40, classes=7, seed=0):
    """ONNX Runtime's probabilities for n faces: each face's class is clear (the check uses confident faces)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes) * 0.3, n)
    probs[np.arange(n), np.arange(n) % classes] += 2.0
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


class GraphPerShape:
    """A backend that captures a graph per batch size on first use. stale=True replays the batch-1 graph without
    the flush TensorRT needs after its context ran another shape: it returns the output captured the first time."""

    def __init__(self, reference, stale):
        self.reference, self.stale, self.captured = reference, stale, {}

    def __call__(self, faces):
        rows = self.reference[faces[:, 0]]
        if self.stale and len(faces) in self.captured:
            return self.captured[len(faces)]
        self.captured[len(faces)] = rows
        return rows


def test_batch_sequence_catches_a_stale_graph_replay():
    reference = _reference()
    faces = np.arange(len(reference))[:, None]          # a "face" is its index; the fakes look rows up
    good = serving_checks.batch_sequence_check(GraphPerShape(reference, stale=False), faces, reference)
    assert good["passed"] and [s["batch"] for s in good["steps"]] == [1, 2, 1, 3, 1]
    firsts = [reference[s["faces"][0]].argmax() for s in good["steps"]]
    assert all(a != b for a, b in zip(firsts, firsts[1:]))    # neighbouring calls hold faces of other classes
    bad = serving_checks.batch_sequence_check(GraphPerShape(reference, stale=True), faces, reference)
    assert not bad["passed"] and [s["top1_match"] for s in bad["steps"]] == [True, True, False, True, False]


class SharedBuffer:
    """One output buffer for all callers; `guarded` serialises calls as the real backends do with a lock."""

    def __init__(self, reference, guarded):
        self.reference, self.buffer, self.lock = reference, None, threading.Lock() if guarded else None

    def _run(self, faces):
        self.buffer = self.reference[faces[:, 0]]
        time.sleep(0.002)                     # the device works; another thread may overwrite the buffer now
        return self.buffer.copy()

    def __call__(self, faces):
        if self.lock is None:
            return self._run(faces)
        with self.lock:
            return self._run(faces)


def test_threaded_check_catches_outputs_that_belong_to_another_thread():
    reference = _reference()
    faces = np.arange(len(reference))[:, None]
    good = serving_checks.threaded_check(SharedBuffer(reference, guarded=True), faces, reference)
    assert good["passed"] and good["threads"] == 8 and not good["errors"]
    bad = serving_checks.threaded_check(SharedBuffer(reference, guarded=False), faces, reference)
    assert not bad["passed"] and bad["mismatched_calls"] > 0


def test_threaded_check_reports_exceptions_from_threads():
    reference = _reference()

    def broken(faces):
        raise RuntimeError("invalid device context")
    result = serving_checks.threaded_check(broken, np.arange(len(reference))[:, None], reference, calls=1)
    assert not result["passed"] and len(result["errors"]) == 8 and "invalid device context" in result["errors"][0]


def test_too_few_confident_faces_is_a_clear_error():
    flat = np.full((20, 7), 1 / 7, np.float32)
    with pytest.raises(Exception, match="margin >= 0.3"):
        serving_checks.batch_sequence_check(lambda f: flat[f[:, 0]], np.arange(20)[:, None], flat)


def test_report_says_why_an_engine_failed():
    result = {"engine": "/x/m_int8_trt.engine", "parity": {"passed": True},
              "batch_sequence": {"passed": True}, "threads": {"passed": True},
              "layers": {"passed": False, "error": "the engine inspector gave layer names only"},
              "gate": {"passed": False, "rule": "top-1 drop <= 0.5 pts", "validation": "3589 faces from x.npz",
                       "onnx": {"drop_points": 0.1}, "candidate": {"drop_points": 1.9}}}
    lines = failures(result)
    assert lines == ["FAIL m_int8_trt.engine layers: could not run: the engine inspector gave layer names only",
                     "FAIL m_int8_trt.engine gate: the engine breaks the accuracy gate its ONNX passed (top-1 drop <= "
                     "0.5 pts on 3589 faces from x.npz): ONNX {'drop_points': 0.1}, engine {'drop_points': 1.9}"]
