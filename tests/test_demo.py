"""fer-demo end to end: video in -> annotated video + JSON Lines out, image folders, what it prints for a person,
Ctrl-C, clear errors, input checks before the first-use export, and reuse of an existing export."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, REPO, needs_export_stack
from test_pipeline import YUNET_320, scene, tiny_model, write_tiny_classifier  # noqa: F401  (tiny_model: a fixture)

# The detector is the bundled YuNet unless a test names one: no ../shared needed. The tiny classifier needs onnx.
pytestmark = [needs_export_stack]
needs_yunet_320 = pytest.mark.skipif(not YUNET_320.exists(), reason=f"needs {YUNET_320}")


def write_video(path: Path, frames: int, size=(320, 240)) -> Path:
    """An MJPG .avi of the astronaut's face drifting to the right."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    base = scene(1, size)
    for i in range(frames):
        writer.write(np.roll(base, i % 20, axis=1))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_to_annotated_video_and_jsonl(tmp_path, tiny_model):
    from fer_edge.cli.demo import main
    video = write_video(tmp_path / "in.avi", 12)
    out, jsonl = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    rc = main([str(video), "--model", str(tiny_model), "--out", str(out),
               "--jsonl", str(jsonl), "--quiet", "--threads", "1"])
    assert rc == 0
    assert count_frames(out) == 12
    records = read_jsonl(jsonl)
    assert [r["frame"] for r in records] == list(range(12))
    assert all(len(r["faces"]) == 1 for r in records)
    assert {r["faces"][0]["track_id"] for r in records} == {1}        # one person, one id
    face = records[-1]["faces"][0]
    assert face["smoothed_label"] in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert len(face["smoothed_probabilities"]) == 7
    assert set(records[0]) == {"frame", "name", "latency_ms", "stages_ms", "faces"}   # the JSON Lines format
    assert set(records[0]["stages_ms"]) == {"detect", "crop", "classify", "smooth"}
    first = cv2.VideoCapture(str(out)).read()[1]
    assert first.shape == (240, 320, 3)
    assert not np.array_equal(first, scene(1, (320, 240)))             # something was drawn


def test_image_folder_in_image_folder_out(tmp_path, tiny_model):
    from fer_edge.cli.demo import main
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), scene(1))
    cv2.imwrite(str(photos / "b.jpg"), scene(4))
    cv2.imwrite(str(photos / "c.png"), np.zeros((50, 60), np.uint8))  # gray, no face
    out, jsonl = tmp_path / "annotated", tmp_path / "faces.jsonl"
    rc = main([str(photos), "--model", str(tiny_model), "--out", str(out), "--jsonl", str(jsonl), "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert [len(r["faces"]) for r in read_jsonl(jsonl)] == [1, 4, 0]


def test_clear_errors(tmp_path, tiny_model, capsys, monkeypatch):
    from fer_edge.cli.demo import main
    assert main([str(tmp_path / "nope.mp4"), "--model", str(tiny_model)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main([str(tmp_path), "--model", str(tiny_model), "--show"]) == 2
    assert "needs a display" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "a.png"), scene(1))
    assert main([str(tmp_path / "a.png"), "--model", str(tiny_model), "--out", str(tmp_path / "x.gif")]) == 2
    assert "unknown video type" in capsys.readouterr().err
    assert main([str(tmp_path), "--model", str(tiny_model), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "not a single image" in capsys.readouterr().err


def test_one_image_to_one_annotated_image(tmp_path, tiny_model):
    from fer_edge.cli.demo import main
    cv2.imwrite(str(tmp_path / "group.png"), scene(4))
    assert main([str(tmp_path / "group.png"), "--model", str(tiny_model),
                 "--out", str(tmp_path / "annotated.jpg"), "--quiet"]) == 0
    assert cv2.imread(str(tmp_path / "annotated.jpg")).shape == (480, 640, 3)


@pytest.mark.slow
def test_ctrl_c_finalises_the_video(tmp_path, tiny_model):
    video = write_video(tmp_path / "long.avi", 1500, size=(160, 120))
    out, jsonl = tmp_path / "out.avi", tmp_path / "faces.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge.cli.demo", str(video), "--model", str(tiny_model),
                             "--out", str(out), "--jsonl", str(jsonl), "--quiet",
                             "--threads", "1"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "stopped by Ctrl-C" in err
    written = len(read_jsonl(jsonl))
    assert 5 <= written < 1500
    assert count_frames(out) == written                               # the video was finalised, every frame in it


def test_sources_and_latest_frame_dropping(tmp_path):
    from fer_edge.runtime.errors import DataError
    from fer_edge.pipeline.video_io import open_source
    video = write_video(tmp_path / "clip.avi", 60, size=(160, 120))
    with open_source(video) as source:                                # files: every frame, in order
        assert source.kind == "video" and not source.is_live and source.frame_count == 60
        assert [f.index for f in source] == list(range(60))
    with open_source(video, live=True) as source:                     # live: a slow consumer skips stale frames
        seen = []
        for frame in source:
            seen.append(frame.index)
            time.sleep(0.05)
        assert source.is_live and source.dropped > 0 and len(seen) + source.dropped == 60
    cv2.imwrite(str(tmp_path / "one.png"), scene(1, (160, 120)))
    with open_source(tmp_path / "one.png") as source:
        assert [f.name for f in source] == ["one.png"]
    with pytest.raises(DataError, match="no images"):
        open_source(tmp_path / "clip.avi.d" if (tmp_path / "clip.avi.d").mkdir() is None else None)
    with pytest.raises(DataError, match="webcam"):
        open_source("97")


@needs_yunet_320
def test_robot_loop_example_prints_the_smoothed_emotion(tmp_path, tiny_model):
    video = write_video(tmp_path / "clip.avi", 8)
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "robot_loop.py"), "--source", str(video),
                           "--model", str(tiny_model), "--detector", str(YUNET_320), "--budget-ms", "100",
                           "--frames", "8", "--threads", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("person 1: ")
    assert "8 frames" in proc.stderr


# ------------------------------------------------------------------ what a person sees
FACE_LINE = re.compile(r"^(?P<name>\S+) face (?P<i>\d+): (?P<label>\w+) (?P<score>\d\.\d\d), "
                       r"box x=(?P<x>-?\d+) y=(?P<y>-?\d+) w=(?P<w>\d+) h=(?P<h>\d+)$")


def test_a_photo_prints_each_face_with_box_label_and_score(tmp_path, tiny_model, capsys):
    from fer_edge.cli.demo import main
    cv2.imwrite(str(tmp_path / "group.png"), scene(4))
    jsonl = tmp_path / "faces.jsonl"
    assert main([str(tmp_path / "group.png"), "--model", str(tiny_model), "--jsonl", str(jsonl)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    matches = [FACE_LINE.match(line) for line in lines]
    assert len(lines) == 4 and all(matches), out
    faces = read_jsonl(jsonl)[0]["faces"]                           # the same faces, machine-readable
    for i, (m, face) in enumerate(zip(matches, faces), 1):
        assert m["name"] == "group.png" and int(m["i"]) == i and m["label"] in FER2013_LABELS
        assert (m["label"], float(m["score"])) == (face["label"], round(face["score"], 2))
        assert [int(m[k]) for k in "xywh"] == [int(round(v)) for v in face["box"]]
    assert "1 frames, 4 faces" in err


def test_the_openvino_backend_gives_the_same_answers(tmp_path, tiny_model, capsys):
    """--backend openvino (the CPU-kiosk choice) runs the same model: same faces, labels and scores."""
    pytest.importorskip("openvino", reason="needs the [openvino] extra")
    from fer_edge.cli.demo import main
    cv2.imwrite(str(tmp_path / "group.png"), scene(4))
    answers = {}
    for backend in ("onnxruntime", "openvino"):
        assert main([str(tmp_path / "group.png"), "--model", str(tiny_model), "--backend", backend]) == 0
        answers[backend] = [FACE_LINE.match(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers["openvino"]) == 4 and all(answers["openvino"])
    for ort, ov in zip(answers["onnxruntime"], answers["openvino"]):
        assert ort["label"] == ov["label"] and abs(float(ort["score"]) - float(ov["score"])) <= 0.011


def test_a_photo_without_a_face_says_so(tmp_path, tiny_model, capsys):
    from fer_edge.cli.demo import main
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((240, 320, 3), 128, np.uint8))
    assert main([str(tmp_path / "wall.png"), "--model", str(tiny_model)]) == 0
    assert capsys.readouterr().out == "wall.png: no face found\n"


def test_a_video_prints_appearances_and_a_per_person_summary(tmp_path, tiny_model, capsys):
    from fer_edge.cli.demo import main
    video = write_video(tmp_path / "in.avi", 12)
    assert main([str(video), "--model", str(tiny_model), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"^frame 0 person 1: \w+ \d\.\d\d, box x=\d+ y=\d+ w=\d+ h=\d+ \(appears\)$", lines[0]), lines
    summary = lines[-1]
    m = re.match(r"^person 1: frames 0-11, in 12 of them: (.+)$", summary)
    assert m, lines
    shares = dict(part.rsplit(" ", 1) for part in m.group(1).split(", "))
    assert set(shares) <= set(FER2013_LABELS) and abs(sum(int(v[:-1]) for v in shares.values()) - 100) <= len(shares)
    # Every label of the summary was announced: at the appearance or on a change of the shown label.
    announced = [re.match(r"^frame \d+ person 1: (\w+) ", line).group(1) for line in lines[:-1]]
    assert set(announced) == set(shares) and all("(was " in line for line in lines[1:-1])


def test_quiet_prints_nothing_and_jsonl_to_stdout_stays_json(tmp_path, tiny_model, capsys):
    from fer_edge.cli.demo import main
    video = write_video(tmp_path / "in.avi", 6)
    assert main([str(video), "--model", str(tiny_model), "--quiet", "--threads", "1"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main([str(video), "--model", str(tiny_model), "--jsonl", "-", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]        # every stdout line is JSON
    assert [r["frame"] for r in records] == list(range(6)) and all(len(r["faces"]) == 1 for r in records)
    assert "person 1: frames 0-5" in err                              # the lines for people moved to stderr


# ------------------------------------------------------------------ checks first, export last, reuse always
@pytest.fixture()
def no_export(tmp_path, monkeypatch):
    """An empty cache and working folder, and an export that fails the test if anything reaches it."""
    from fer_edge.export import reference
    monkeypatch.setenv("FER_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reference, "export_model", lambda **kw: pytest.fail("the model was exported"))
    monkeypatch.setattr(reference, "require_export_stack", lambda purpose: pytest.fail("export stack checked"))
    return reference


@pytest.mark.parametrize("args,message", [
    (["nope.png"], "nope.png: no such file or folder"),
    (["97"], "cannot open webcam 97"),
    (["face.png", "--out", "missing/annotated.jpg"], "folder missing does not exist"),
    (["face.png", "--jsonl", "missing/faces.jsonl"], "does not exist or is not writable"),
    (["face.png", "--detector", "mediapipe"], "unknown face detector"),
])
def test_inputs_are_checked_before_the_first_use_export(tmp_path, no_export, capsys, args, message):
    from fer_edge.cli.demo import main
    cv2.imwrite(str(tmp_path / "face.png"), scene(1))
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_an_existing_export_of_the_same_weights_is_reused(tmp_path, no_export, capsys):
    from fer_edge.cli.demo import main
    sha = no_export.reference_weights_sha256()
    cv2.imwrite(str(tmp_path / "face.png"), scene(1))
    # Another model's export in ./fer-artifacts is not taken for the bundled one ...
    write_tiny_classifier(tmp_path / "fer-artifacts" / "other_fp32.onnx", weights_sha256="0" * 64)
    assert no_export.find_reference_export() is None
    # ... an export of the bundled weights there (what `fer-export` writes by default) is,
    ours = write_tiny_classifier(tmp_path / "fer-artifacts" / "tiny_fp32.onnx", weights_sha256=sha)
    assert no_export.find_reference_export() == Path("fer-artifacts/tiny_fp32.onnx")
    # ... and the cache folder keyed by the weights' hash comes first.
    cached = write_tiny_classifier(no_export.cache_folder(sha) / "tiny_fp32.onnx", weights_sha256=sha)
    assert no_export.find_reference_export() == cached
    assert main([str(tmp_path / "face.png")]) == 0                   # no --model: runs on the cached export
    out, err = capsys.readouterr()
    assert FACE_LINE.match(out.strip()) and f"model: {cached}" in err and "exported earlier" in err
    assert ours.exists()
