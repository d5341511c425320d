"""fer-bench hardening: one label check for every reader, classes the model lacks, and warnings when timings lie."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, needs_export_stack, synthetic_faces
from fer_edge.cli import bench as cli
from fer_edge.data.datasets import load_faces
from fer_edge.benchmarks.latency import BLOCK_CALLS, SETTLE_CALLS, measure_models
from fer_edge.benchmarks.report import busy_machine_warning, environment_markdown, ordering_warnings, timing_warnings
from fer_edge.runtime.errors import DataError
from fer_edge.data.labels import FERPLUS_LABELS, label_index_map, parse_label_map

FAST = ["--iterations", "2", "--warmup", "1", "--threads", "1", "--batch", "1", "--no-progress"]


# ----------------------------------------------------------------------------- data writers
def write_npz(path, y, class_names=None, size=48):
    x = np.random.default_rng(0).integers(0, 256, (len(y), size, size), dtype=np.uint8)
    arrays = {"x": x, "y": np.asarray(y)}
    if class_names is not None:
        arrays["class_names"] = np.array(class_names)
    np.savez(path, **arrays)
    return path


def write_csv(path, codes):
    rows = ["emotion,pixels,Usage"] + [f"{c},{' '.join(['7'] * 16)},Training" for c in codes]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_class_folders(root, counts):
    """root/<class>/<i>.png, counts = {class: faces}."""
    faces, _ = synthetic_faces(sum(counts.values()), size=48, seed=5)
    position = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            assert cv2.imwrite(str(root / name / f"{i}.png"), faces[position])
            position += 1
    return root


# ----------------------------------------------------------------------------- one label check, every reader
@pytest.mark.parametrize("codes,found", [([0, 3, -1, 6, -1], "-1 (2 rows), 2 of 5 rows"),
                                         ([0, 9, 2], "9 (1 row), 1 of 3 rows")])
def test_npz_out_of_range_labels_are_refused(tmp_path, codes, found):
    path = write_npz(tmp_path / "bad.npz", np.array(codes, dtype=np.int64))
    with pytest.raises(DataError) as info:
        load_faces(path, labels=FER2013_LABELS)
    message = str(info.value)
    assert "bad.npz" in message and "'y' codes must be 0..6 (7 classes: angry" in message
    assert found in message and "fix those labels or remove those rows" in message


def test_csv_and_npz_share_the_check(tmp_path):
    with pytest.raises(DataError, match=r"bad\.csv: emotion codes must be 0\.\.6 .*found -1 \(1 row\), 7 \(2 rows\)"):
        load_faces(write_csv(tmp_path / "bad.csv", [0, -1, 7, 7]))
    # The valid range comes from the npz's own class_names: 8 FER+ classes allow code 7, not 8.
    plus = write_npz(tmp_path / "plus.npz", [7, 8], class_names=FERPLUS_LABELS)
    with pytest.raises(DataError, match=r"'y' codes must be 0\.\.7 \(8 classes: neutral.*found 8 \(1 row\)"):
        load_faces(plus)


def test_npz_labels_must_be_whole_numbers_one_per_face(tmp_path):
    with pytest.raises(DataError, match=r"'y' codes must be whole numbers 0\.\.6.*float64 values such as \[1\.0, 2\.5\]"):
        load_faces(write_npz(tmp_path / "float.npz", np.array([1.0, 2.5])))
    assert load_faces(write_npz(tmp_path / "whole.npz", np.array([1.0, 2.0]))).targets.tolist() == [1, 2]
    path = tmp_path / "short.npz"
    np.savez(path, x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"'y' must hold one class index per face, shape \[3\], got \(2,\)"):
        load_faces(path)


# ----------------------------------------------------------------------------- classes the model lacks
def test_folder_with_an_extra_class_is_refused_naming_the_options(tmp_path):
    root = write_class_folders(tmp_path / "ck", {"happy": 3, "contempt": 2, "sad": 2})
    with pytest.raises(DataError) as info:
        load_faces(root, labels=FER2013_LABELS)
    message = str(info.value)
    assert "['contempt'] do not match the model's labels" in message and "contempt (2) faces" in message
    assert "--unknown-classes drop" in message and "--label-map contempt=" in message


def test_drop_and_label_map_on_an_extra_class(tmp_path):
    root = write_class_folders(tmp_path / "ck", {"happy": 3, "contempt": 2, "sad": 2})
    dropped = load_faces(root, labels=FER2013_LABELS, unknown_classes="drop")
    assert len(dropped) == 5 and dropped.dropped == {"contempt": 2}
    assert sorted(FER2013_LABELS[t] for t in dropped.targets) == ["happy"] * 3 + ["sad"] * 2
    mapped = load_faces(root, labels=FER2013_LABELS, label_map=parse_label_map("contempt=neutral"))
    assert len(mapped) == 7 and mapped.dropped == {} and mapped.mapped == {"contempt": 2}
    assert [FER2013_LABELS[t] for t in mapped.targets].count("neutral") == 2
    # --limit keeps the first N faces of the file; dropping happens within them.
    assert len(load_faces(root, labels=FER2013_LABELS, limit=4, unknown_classes="drop")) == 2


def test_ferplus_npz_on_a_fer2013_model(tmp_path):
    path = write_npz(tmp_path / "plus.npz", [0, 7, 7, 1], class_names=FERPLUS_LABELS)
    with pytest.raises(DataError, match=r"\['contempt'\] do not match .*contempt \(2\) faces"):
        load_faces(path, labels=FER2013_LABELS)
    faces = load_faces(path, labels=FER2013_LABELS, unknown_classes="drop")
    assert faces.dropped == {"contempt": 2} and [FER2013_LABELS[t] for t in faces.targets] == ["neutral", "happy"]
    with pytest.raises(DataError, match="all 2 faces are of classes the model lacks"):
        load_faces(write_npz(tmp_path / "only.npz", [7, 7], class_names=FERPLUS_LABELS), labels=FER2013_LABELS,
                   unknown_classes="drop")


def test_label_map_mistakes_are_named(tmp_path):
    path = write_npz(tmp_path / "plus.npz", [0, 7], class_names=FERPLUS_LABELS)
    with pytest.raises(DataError, match=r"--label-map names \['contemt'\], which are not classes of this data"):
        load_faces(path, labels=FER2013_LABELS, label_map={"contemt": "neutral"})
    with pytest.raises(DataError, match=r"--label-map targets \['calm-ish'\] are not labels of the model"):
        load_faces(path, labels=FER2013_LABELS, label_map={"contempt": "calm-ish"})
    for spec in ("contempt", "contempt=", "=neutral", "contempt=neutral,contempt=sad"):
        with pytest.raises(ValueError, match="--label-map"):
            parse_label_map(spec)
    with pytest.raises(ValueError, match="do not match the model's labels"):
        label_index_map(FER2013_LABELS, ["happy", "contempt"])


# ----------------------------------------------------------------------------- warnings when timings lie
def _stats(median):
    return {"median": median, "p99": median * 1.5}


def test_busy_machine_warning_rule():
    assert busy_machine_warning({"before timing": [1.9, 1.0, 1.0], "after timing": [2.0, 1.0, 1.0]}, cores=2) is None
    note = busy_machine_warning({"before timing": [1.0, 1.0, 1.0], "after timing": [6.13, 3.0, 1.2]}, cores=2)
    assert "1.00 before timing, 6.13 after timing on 2 available core(s)" in note and "Rerun on an idle machine" in note
    assert busy_machine_warning({"before timing": [3.5, 1, 1], "after timing": [0.5, 1, 1]}, cores=2) is not None
    assert "could not be read" in busy_machine_warning({"before timing": None, "after timing": None}, cores=2)
    assert "WARNING" in environment_markdown({"command": "x", "cpu": "c", "cores": 2, "cores_available": 2, "os": "o",
                                              "gpu": "none", "date": "d", "load_average": [4.0, 2.0, 1.0]})


def test_ordering_warnings_flag_a_stage_slower_than_end_to_end():
    honest = {"path": "a/fp32.onnx", "latency": {"1": {"end_to_end": _stats(6.0), "inference": _stats(5.8)}}}
    lying = {"path": "a/fp16.onnx", "latency": {"1": {"end_to_end": _stats(2.02), "inference": _stats(5.85)},
                                                "32": {"end_to_end": _stats(9.0), "inference": _stats(8.0),
                                                       "gpu_compute": _stats(9.5)}}}
    notes = ordering_warnings([honest, lying])
    assert len(notes) == 2
    assert notes[0].startswith("fp16.onnx batch 1: inference p50 5.85 ms is above end_to_end p50 2.02 ms")
    assert notes[1].startswith("fp16.onnx batch 32: gpu_compute p50 9.50 ms")
    idle = {"before timing": [0.5, 0.5, 0.5], "after timing": [0.7, 0.5, 0.5]}
    assert timing_warnings(idle, 2, [honest]) == []
    assert len(timing_warnings({"before timing": [8.0, 5, 3], "after timing": [9.0, 6, 3]}, 2, [honest, lying])) == 3


class _FakeModel:
    """Records the order of its calls; just enough of the runtime's Model for measure_models."""
    max_batch = None

    def __init__(self, name, log):
        self.name, self.log, self.backend = name, log, object()

    def preprocess(self, crops):
        return np.zeros((len(crops), 1, 4, 4), np.float32)

    def predict_proba(self, crops):
        self.log.append(f"{self.name}/e2e")

    def infer(self, tensor):
        self.log.append(f"{self.name}/inf")


def test_models_are_timed_round_robin_in_blocks():
    log = []
    faces = list(np.zeros((1, 4, 4), np.uint8))
    results = measure_models([_FakeModel("a", log), _FakeModel("b", log)], faces, [1], warmup=0, iterations=10)
    block = [BLOCK_CALLS + SETTLE_CALLS]
    one_round = ["a/e2e"] * block[0] + ["a/inf"] * block[0] + ["b/e2e"] * block[0] + ["b/inf"] * block[0]
    assert log == one_round * 2  # two rounds of 5 timed calls give the 10 iterations, models alternating
    assert [r["1"]["end_to_end"]["n"] for r in results] == [10, 10]


# ----------------------------------------------------------------------------- the CLI
def test_version_and_no_prefix_matching(capsys):
    done = subprocess.run([sys.executable, "-m", "fer_edge.cli.bench", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("fer-bench (fer-edge ")
    with pytest.raises(SystemExit) as info:
        cli.main(["model.onnx", "--iter", "3"])  # argparse would otherwise read --iter as --iterations
    assert info.value.code == 2
    assert "unrecognized arguments: --iter 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["m.onnx", "--label-map", "contempt=neutral"], "--label-map needs --data"),
    (["m.onnx", "--unknown-classes", "drop"], "--unknown-classes drop needs --data"),
])
def test_data_options_need_data(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fer-bench: error: {message} (it chooses how the faces of --data are scored)"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-bench: error:") and "\n" not in err and "Traceback" not in err
    return err


@needs_export_stack
@pytest.mark.parametrize("codes,found", [([0, -1, 3], "-1 (1 row)"), ([0, 9, 3], "9 (1 row)")])
def test_cli_refuses_out_of_range_npz_labels(exported, tmp_path, capsys, codes, found):
    data = write_npz(tmp_path / "bad.npz", codes)
    assert cli.main([str(exported["fp32"].path), "--data", str(data), *FAST]) == 2
    err = _one_error_line(capsys)
    assert "bad.npz: 'y' codes must be 0..6" in err and found in err


@needs_export_stack
def test_cli_unknown_classes_error_then_drop(exported, tmp_path, capsys):
    data = write_class_folders(tmp_path / "ck", {"happy": 3, "contempt": 2, "sad": 2})
    model = str(exported["fp32"].path)
    assert cli.main([model, "--data", str(data), *FAST]) == 2
    assert "--unknown-classes drop" in _one_error_line(capsys)

    out = tmp_path / "report"
    assert cli.main([model, "--data", str(data), "--unknown-classes", "drop", "--report", str(out), *FAST]) == 0
    assert "ck: dropped 2 faces of classes the model lacks: contempt (2)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    accuracy = report["models"][0]["accuracy"]
    assert (accuracy["dropped_faces"], accuracy["dropped_classes"], accuracy["images"]) == (2, {"contempt": 2}, 5)
    assert report["settings"]["unknown_classes"] == "drop"


@needs_export_stack
def test_cli_warns_when_the_machine_is_busy(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 4.0, 2.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    out = tmp_path / "report"
    fp32, fp16 = str(exported["fp32"].path), str(exported["fp16"].path)
    assert cli.main([fp32, fp16, "--report", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "load average (1/5/15 min): before timing [7.5, 4.0, 2.0]; after timing [7.5, 4.0, 2.0]; 2 core(s)" in printed
    assert "WARNING: the machine was busy: 1-minute load average 7.50 before timing, 7.50 after timing" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"][0].startswith("the machine was busy")
    assert report["env"]["load_average_before_timing"] == [7.5, 4.0, 2.0]
    assert "round-robin" in report["settings"]["schedule"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert rows and all(r["warnings"].startswith("the machine was busy") for r in rows)


# ------------------------------------------------------------------ FER+ labels straight from an npz
FERPLUS_COLUMNS = np.array(list(FERPLUS_LABELS) + ["unknown", "NF"])


def test_ferplus_majority_rule_by_hand():
    from fer_edge.data.datasets import ferplus_majority
    votes = np.array([[0, 7, 1, 0, 0, 0, 0, 0, 2, 0],    # happiness
                      [4, 0, 0, 0, 0, 0, 0, 4, 2, 0],    # neutral and contempt tied: no clear majority
                      [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],    # unknown
                      [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],   # not a face
                      [0, 0, 0, 0, 1, 0, 0, 6, 3, 0]])   # contempt
    assert ferplus_majority(votes).tolist() == [1, -1, -1, -1, 7]


def test_npz_scored_on_its_ferplus_votes(tmp_path):
    x, _ = synthetic_faces(5, size=48)
    votes = np.array([[0, 7, 1, 0, 0, 0, 0, 0, 2, 0], [4, 0, 0, 0, 0, 0, 0, 4, 2, 0], [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],
                      [6, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 6, 3, 0]], np.uint8)
    path = tmp_path / "fer.npz"
    np.savez(path, x=x, y=np.zeros(5, np.uint8), ferplus_votes=votes, ferplus_columns=FERPLUS_COLUMNS)
    faces = load_faces(path, labels=list(FERPLUS_LABELS), npz_labels="ferplus")
    assert faces.targets.tolist() == [1, 0, 7] and len(faces.images) == 3
    assert "2 rows without a clear emotion majority left out" in faces.source
    # A 7-class FER-2013 model lacks contempt: refused, or scored without it with the usual option.
    with pytest.raises(DataError, match=r"\['contempt'\] do not match"):
        load_faces(path, labels=FER2013_LABELS, npz_labels="ferplus")
    fer2013_order = load_faces(path, labels=FER2013_LABELS, npz_labels="ferplus", unknown_classes="drop")
    assert fer2013_order.targets.tolist() == [FER2013_LABELS.index("happy"), FER2013_LABELS.index("neutral")]
    with pytest.raises(DataError, match="needs 'ferplus_votes'"):
        write_npz(tmp_path / "plain.npz", [0, 1, 2])
        load_faces(tmp_path / "plain.npz", npz_labels="ferplus")
    with pytest.raises(DataError, match="applies to .npz files only"):
        load_faces(tmp_path, npz_labels="ferplus")


def test_fer_bench_npz_labels_ferplus_needs_data(capsys):
    rc = cli.main(["model.onnx", "--npz-labels", "ferplus"])
    err = capsys.readouterr().err
    assert rc == 2 and "--npz-labels ferplus needs --data" in err and "Traceback" not in err


@needs_export_stack
@pytest.mark.shared
def test_fer_bench_scores_ferplus_publictest(exported, tmp_path, capsys):
    from conftest import PUBLICTEST_NPZ
    if not PUBLICTEST_NPZ.exists():
        pytest.skip(f"needs FER-2013 with FER+ votes from ../shared ({PUBLICTEST_NPZ} not found)")
    out = tmp_path / "report"
    assert cli.main([str(exported["fp32"].path), "--data", str(PUBLICTEST_NPZ), "--npz-labels", "ferplus",
                     "--unknown-classes", "drop", "--limit", "400", "--report", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    accuracy = report["models"][0]["accuracy"]
    assert report["settings"]["npz_labels"] == "ferplus" and "FER+ majority labels" in accuracy["data"]
    # --limit takes the first 400 faces that have a clear FER+ majority; contempt ones are then dropped.
    assert accuracy["images"] + accuracy["dropped_faces"] == 400
    assert set(accuracy["dropped_classes"]) <= {"contempt"} and accuracy["images"] >= 350
