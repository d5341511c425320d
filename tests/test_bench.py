"""fer-bench end to end on exported artifacts, plus the shared stats code and the extension points."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, PUBLICTEST_NPZ, has_torch_stack, needs_export_stack, needs_shared, synthetic_faces
from fer_edge.benchmarks import fer_bench
from fer_edge.cli import bench as cli
from fer_edge.data.metrics import agreement, classification_metrics
from fer_edge.benchmarks.latency import SUMMARY_KEYS, measure_model, percentile, run_interleaved, summarize

FAST = ["--iterations", "3", "--warmup", "1", "--threads", "1", "--no-progress"]


# ----------------------------------------------------------------------------- shared stats code
def test_summarize_uses_trtexec_percentiles():
    samples = list(range(100, 0, -1))  # 1..100 ms, unsorted
    stats = summarize(samples, batch=4)
    assert list(stats) == list(SUMMARY_KEYS)
    assert (stats["min"], stats["max"], stats["mean"]) == (1, 100, 50.5)
    # trtexec: index max(n-1-floor((1-p/100)n), 0) on ascending timings; median averages the middle pair.
    assert (stats["median"], stats["p90"], stats["p95"], stats["p99"]) == (50.5, 90, 95, 100)  # float32 rank, as trtexec
    assert stats["throughput_ips"] == pytest.approx(4 * 100 * 1000 / 5050)
    assert stats["n"] == 100
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([], 1)


def test_run_interleaved_blocks_drop_settling_calls():
    """Blocks of calls per runtime, the first `settle` of each block untimed; rounds stay interleaved."""
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    samples = run_interleaved(calls, warmup=1, iterations=3, block=4, settle=1)
    assert order[:2] == ["a", "b"]  # warm-up: one call each
    assert order[2:] == (["a"] * 4 + ["b"] * 4) * 3
    assert {k: len(v) for k, v in samples.items()} == {"a": 9, "b": 9}
    with pytest.raises(ValueError, match="settle"):
        run_interleaved(calls, warmup=0, iterations=1, block=2, settle=2)


def test_classification_metrics_and_agreement():
    targets = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(targets, preds, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Agreement matches classes by name, so models with different label orders compare correctly.
    assert agreement(["happy", "sad"], np.array([0, 1, 0]), ["sadness", "happiness"], np.array([1, 0, 0])) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- fer-bench end to end
def _stats_ok(stats):
    assert set(stats) == set(SUMMARY_KEYS)  # report.json is written with sorted keys
    assert 0 < stats["min"] <= stats["median"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert stats["throughput_ips"] > 0


@needs_export_stack
def test_bench_report_schema_and_values(exported, synthetic_npz, tmp_path, capsys):
    fp32, fp16 = str(exported["fp32"].path), str(exported["fp16"].path)
    out = tmp_path / "report"
    code = cli.main([fp32, "--model", fp16, "--data", str(synthetic_npz), "--batch", "1,4", "--report", str(out), *FAST])
    assert code == 0
    table = capsys.readouterr().out
    assert "| Model | Precision | Backend |" in table and exported["fp16"].path.name in table

    report = json.loads((out / "report.json").read_text())
    env = report["env"]
    for key in ("cpu", "cores", "os", "python", "numpy", "onnxruntime", "opencv", "torch", "gpu", "date", "command"):
        assert key in env
    assert env["command"].startswith("fer-bench ") and "--batch 1,4" in env["command"]
    assert [m["precision"] for m in report["models"]] == ["fp32", "fp16"]
    for model in report["models"]:
        assert model["backend"] == "onnxruntime" and model["size_mb"] > 1
        assert set(model["latency"]) == {"1", "4"}
        for batch in ("1", "4"):
            for stage in ("end_to_end", "inference"):
                _stats_ok(model["latency"][batch][stage])
                assert model["latency"][batch][stage]["n"] == 3
        acc = model["accuracy"]
        assert 0.0 <= acc["top1"] <= 1.0 and 0.0 <= acc["macro_f1"] <= 1.0
        assert sorted(acc["per_class"]) == sorted(FER2013_LABELS)  # JSON keys are written sorted
        assert sum(c["support"] for c in acc["per_class"].values()) == 300
        assert np.array(acc["confusion_matrix"]).sum() == 300
        png = cv2.imread(str(out / acc["confusion_png"]))
        assert png is not None and 300 <= png.shape[0] <= 1500 and 300 <= png.shape[1] <= 1500
    assert report["models"][0]["agreement_with_reference"] == 1.0
    assert report["models"][1]["agreement_with_reference"] >= 0.95

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 2 * 2 * 2  # models x batches x stages
    assert {r["stage"] for r in rows} == {"end_to_end", "inference"}
    assert all(float(r["median"]) <= float(r["p99"]) for r in rows)


@needs_export_stack
def test_bench_on_csv_split_without_report(exported, tmp_path, capsys):
    x, y = synthetic_faces(20, size=48, seed=9)
    lines = ["emotion,pixels,Usage"] + [f"{t},{' '.join(map(str, f.ravel()))},{'PublicTest' if i % 2 else 'Training'}"
                                        for i, (f, t) in enumerate(zip(x, y))]
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(lines) + "\n")
    assert cli.main([str(exported["fp32"].path), "--data", str(path), "--split", "PublicTest", "--batch", "2", *FAST]) == 0
    out = capsys.readouterr().out
    assert "real crops from fer2013.csv [PublicTest]" in out
    assert not list(tmp_path.glob("*.png"))  # no --report: nothing written


@needs_export_stack
def test_bench_timed_run_stages_and_bench_settings(exported):
    """The TensorRT extension point: backend.timed_run's stages get their own stats blocks."""
    from fer_edge.runtime import load
    model = load(exported["fp32"].path, threads=1)
    inner = model.backend

    class TimedBackend:
        name = "fake-gpu"
        bench_settings = {"cuda_graph": False}

        def run(self, batch):
            return inner.run(batch)

        def timed_run(self, batch):
            inner.run(batch)
            return {"gpu_compute": 1.5, "h2d": 0.25}

    model.backend = TimedBackend()
    faces = list(synthetic_faces(4, size=32)[0])
    latency = measure_model(model, faces, [1, 4], warmup=1, iterations=3)
    for batch in ("1", "4"):
        assert {"end_to_end", "inference", "gpu_compute", "h2d"} <= set(latency[batch])
        assert latency[batch]["gpu_compute"]["median"] == 1.5 and latency[batch]["h2d"]["max"] == 0.25
    assert fer_bench.model_entry(model, model.backend.bench_settings)["bench_settings"] == {"cuda_graph": False}


@needs_shared
@needs_export_stack
def test_bench_on_real_publictest(exported, tmp_path):
    out = tmp_path / "real"
    code = cli.main([str(exported["fp32"].path), "--data", str(PUBLICTEST_NPZ), "--split", "PublicTest",
                     "--limit", "96", "--batch", "1", "--report", str(out), *FAST])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    acc = report["models"][0]["accuracy"]
    assert acc["images"] == 96 and 0.0 <= acc["top1"] <= 1.0
    assert "fer2013_publictest.npz" in report["settings"]["latency_faces"]


# ----------------------------------------------------------------------------- errors and extension points
@pytest.mark.parametrize("argv,message", [
    ([], "no models given"),
    (["absent.onnx"], "no such file"),
    (["{txt}"], "unknown artifact type '.txt'"),
    (["{onnx}", "--batch", "0"], "--batch '0'"),
    (["{onnx}", "--batch", "one"], "--batch 'one'"),
    (["{onnx}", "--data", "absent.npz"], "absent.npz: no such file"),
    (["{onnx}", "--split", "PublicTest"], "--split needs --data"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, request):
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    needs_onnx = any("{onnx}" in a for a in argv)
    if needs_onnx and not has_torch_stack():
        pytest.skip("needs the [export] extra to build the ONNX fixture")
    onnx_path = str(request.getfixturevalue("exported")["fp32"].path) if needs_onnx else ""
    argv = [a.format(txt=txt, onnx=onnx_path) if "{" in a else a for a in argv]
    assert cli.main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-bench: error:") and message in err and "\n" not in err


def test_engine_without_tensorrt_names_the_fix(tmp_path, capsys):
    pytest.importorskip("fer_edge.runtime.tensorrt.backend", reason="the TensorRT backend module is not written yet")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from fer_edge.runtime.contract import ModelContract
    contract = ModelContract(arch="tf_efficientnetv2_b0", labels=FER2013_LABELS, input_size=48, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5], precision="fp16")
    folder = tmp_path / "plain"  # the message must name TensorRT itself, not just echo the path
    folder.mkdir()
    engine = folder / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    (folder / "model.engine.json").write_text(json.dumps({"contract": contract.to_dict(),
                                                          "engine": {"flavour": "tensorrt", "version": "10.3.0"}}))
    assert cli.main([str(engine), "--no-progress"]) == 2
    err = capsys.readouterr().err.replace(str(engine), "<engine>")
    assert "tensorrt" in err.lower() and "pip install" in err


def test_pipeline_flag_dispatches_to_the_pipeline_benchmark(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.pipeline_bench, "run", lambda args: calls.append(args.pipeline) or 0)
    assert cli.main(["--pipeline", "video.mp4"]) == 0
    assert calls == ["video.mp4"]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out
