"""The bundled models by name: `fer-export --model ferplus`, `fer-demo --model ferplus`, their weights and scores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PUBLICTEST_NPZ, needs_export_stack, needs_shared
from fer_edge.data.labels import FER2013_LABELS, FERPLUS_LABELS
from fer_edge.models.bundled import BUNDLED_MODELS, bundled_model
from fer_edge.runtime.errors import FerEdgeError

FERPLUS = BUNDLED_MODELS["ferplus"].weights


def test_unknown_bundled_name_lists_the_names():
    with pytest.raises(FerEdgeError, match="no bundled model of that name; the bundled models are fer2013, ferplus"):
        bundled_model("affectnet")
    assert bundled_model().name == "fer2013" and bundled_model("ferplus").weights == FERPLUS


def test_cli_refuses_an_unknown_name_and_a_name_with_a_checkpoint(tmp_path):
    for extra, message in ((["--model", "affectnet"], "invalid choice: 'affectnet'"),
                           (["--model", "ferplus", "--checkpoint", "w.pt"], "not allowed with argument")):
        run = subprocess.run([sys.executable, "-m", "fer_edge.cli.export", *extra, "--out", str(tmp_path / "o")],
                             capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


def test_a_file_named_like_a_bundled_model_is_the_file(tmp_path, monkeypatch):
    from fer_edge.export.reference import bundled_name_in
    monkeypatch.chdir(tmp_path)
    assert bundled_name_in(None) == "fer2013" and bundled_name_in("ferplus") == "ferplus"
    assert bundled_name_in("model.onnx") is None
    Path("ferplus").write_bytes(b"")
    assert bundled_name_in("ferplus") is None


def test_shipped_ferplus_weights_and_card_numbers():
    from fer_edge.models.checkpoint import read_safetensors
    assert FERPLUS.stat().st_size <= 15 * 1024 * 1024
    tensors, meta = read_safetensors(FERPLUS)
    assert meta["labels"] == list(FERPLUS_LABELS) and meta["in_chans"] == 1
    assert tensors["classifier.weight"].shape[0] == 8 and str(tensors["classifier.weight"].dtype) == "torch.float16"
    training = meta["training"]
    assert training["publictest_top1"] > 80 and "--init-from" in training["command"]
    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text()
    assert f"{training['publictest_top1']:.2f}" in card     # the card quotes the shipped file's score


@pytest.fixture(scope="module")
def ferplus_export(tmp_path_factory):
    """`fer-export --model ferplus` into <tmp>/fer-artifacts, as a user would run it."""
    home = tmp_path_factory.mktemp("ferplus")
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.export", "--model", "ferplus", "--out",
                          str(home / "fer-artifacts"), "--parity-count", "64"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    (onnx,) = (home / "fer-artifacts").glob("*_fp32.onnx")
    return home, onnx


@needs_export_stack
def test_export_by_name_carries_the_ferplus_contract(ferplus_export):
    from fer_edge.runtime import load
    from fer_edge.runtime.artifact_io import sha256_file
    _, onnx = ferplus_export
    model = load(onnx)
    assert list(model.labels) == list(FERPLUS_LABELS) and model.contract.input_size == 64
    assert model.contract.source_weights_sha256 == sha256_file(FERPLUS)
    assert list(model.labels) != list(FER2013_LABELS)


@needs_export_stack
def test_demo_by_name_reuses_the_export_and_answers_in_ferplus_labels(ferplus_export):
    pytest.importorskip("skimage.data", reason="needs scikit-image for its public-domain astronaut photo")
    import cv2
    from real_faces import astronaut_bgr
    home, onnx = ferplus_export
    photo = home / "astronaut.png"
    cv2.imwrite(str(photo), astronaut_bgr())
    env = {**os.environ, "FER_EDGE_CACHE": str(home / "cache")}
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.demo", str(photo), "--model", "ferplus"], cwd=home,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "the bundled ferplus model, exported earlier" in run.stderr and not (home / "cache").exists()
    label = run.stdout.split("face 1: ")[1].split()[0]
    assert label in FERPLUS_LABELS


@needs_export_stack
@needs_shared
@pytest.mark.shared
@pytest.mark.slow
def test_fer_bench_scores_the_ferplus_export_at_the_card_number(ferplus_export):
    """fer-bench --npz-labels ferplus scores FER+ majority labels from the npz; the exported model gets the top-1
    the shipped file records (within 0.25 pt: other CPUs' kernels may flip a few near-ties)."""
    from fer_edge.models.checkpoint import read_safetensors
    _, onnx = ferplus_export
    out = ferplus_export[0] / "bench"
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.bench", str(onnx), "--data", str(PUBLICTEST_NPZ),
                          "--npz-labels", "ferplus", "--iterations", "5", "--no-progress", "--report", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    (scored,) = report["models"]
    assert scored["accuracy"]["images"] == 3589 - 193      # FER+ rows without a majority emotion are left out
    recorded = read_safetensors(FERPLUS)[1]["training"]["publictest_top1"]
    assert abs(100 * scored["accuracy"]["top1"] - recorded) <= 0.25, (scored["accuracy"]["top1"], recorded)
