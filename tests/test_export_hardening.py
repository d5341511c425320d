"""fer-export hardening: every input checked in seconds before the long work, clean errors for corrupt and
mismatched checkpoints, a real --version everywhere, and artifact+sidecar writes that survive SIGKILL."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FER2013_LABELS, REPO, needs_export_stack

pytestmark = needs_export_stack

# Generous for a loaded 2-core machine: a check reads at most a checkpoint and a few hundred small images, while
# the export it protects takes 12-30 s.
FAST_S = 5.0


# ------------------------------------------------------------------ helpers and fixtures
def cli_error(capsys, rc: int) -> str:
    """The one stderr line of a failed CLI call (exit 2, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def run_export_cli(argv, capsys):
    from fer_edge.cli.export import main
    start = time.perf_counter()
    rc = main([str(a) for a in argv])
    return cli_error(capsys, rc), time.perf_counter() - start


@pytest.fixture(scope="module")
def untrained_ckpt(tmp_path_factory) -> Path:
    """A random-init tf_efficientnetv2_b0 training-dict checkpoint: enough for every check that runs before the
    export (the parity check would refuse it, so no test here exports it)."""
    import torch
    from fer_edge.models.timm_compat import import_timm
    torch.manual_seed(0)
    model = import_timm().create_model("tf_efficientnetv2_b0", num_classes=7, in_chans=1)
    path = tmp_path_factory.mktemp("untrained") / "untrained.pt"
    torch.save({"arch": "tf_efficientnetv2_b0", "img_size": 32, "labels": FER2013_LABELS,
                "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def b2_state_dict(tmp_path_factory) -> Path:
    """A plain tf_efficientnetv2_b2 state_dict (no recorded arch), as a user's own training script saves it."""
    import torch
    from fer_edge.models.timm_compat import import_timm
    model = import_timm().create_model("tf_efficientnetv2_b2", num_classes=7, in_chans=1)
    path = tmp_path_factory.mktemp("b2") / "b2_weights.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def bad_files(tmp_path):
    import argparse
    import torch
    rng = np.random.default_rng(0)
    (tmp_path / "random.pt").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(3)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    # Old training scripts store their argparse.Namespace: a real pickle that weights_only refuses.
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "namespace.pt")
    return tmp_path


def write_images(folder: Path, count: int, size: int = 32) -> Path:
    import cv2
    from conftest import synthetic_faces
    folder.mkdir(parents=True, exist_ok=True)
    x, _ = synthetic_faces(count, size=size, seed=3)
    for i, image in enumerate(x):
        cv2.imwrite(str(folder / f"face_{i:03d}.png"), image)
    return folder


# ------------------------------------------------------------------ 4. --version and no prefix matching
def _console_mains():
    from fer_edge.cli import bench as bench_cli
    from fer_edge.cli import export as export_cli
    from fer_edge.cli import demo as demo_cli
    from fer_edge.cli import train
    return {"fer-export": (export_cli.main, ["--fp1"]), "fer-bench": (bench_cli.main, ["m.onnx", "--no-prog"]),
            "fer-demo": (demo_cli.main, ["x.mp4", "--qui"]), "fer-train": (train.main, ["--print-conf"]),
            "fer-train ship": (lambda argv: train.main(["ship"] + argv), ["--checkpoint", "x.pt", "--rep", "r"])}


@pytest.mark.parametrize("prog", ["fer-export", "fer-bench", "fer-demo", "fer-train", "fer-train ship"])
def test_version_prints_and_a_prefix_is_refused(prog, capsys, tmp_path, monkeypatch):
    import fer_edge
    monkeypatch.chdir(tmp_path)
    main, prefix_argv = _console_mains()[prog]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{prog} (fer-edge {fer_edge.__version__}")
    assert list(tmp_path.iterdir()) == []                       # nothing exported, no fer-artifacts/
    with pytest.raises(SystemExit) as exit_info:
        main(prefix_argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["fer_edge.benchmarks.gpu_check", "fer_edge.benchmarks.runtime_overhead",
                                    "fer_edge.benchmarks.engine_build_bench", "fer_edge.benchmarks.pipeline_bench",
                                    "fer_edge.benchmarks.compare_torch_ort", "fer_edge.calibration.synthesize",
                                    "fer_edge.benchmarks.int8_bench"])
def test_python_m_scripts_have_version(module, capsys):
    import importlib
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"python -m {module} (fer-edge ")


def test_fer_export_version_in_a_subprocess_exports_nothing(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.export", "--version"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("fer-export (fer-edge ")
    assert list(tmp_path.iterdir()) == []
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.export", "--check", "x.pt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unrecognized arguments: --check" in run.stderr


# ------------------------------------------------------------------ 1. output folder, before anything is read
def test_out_that_is_a_file_fails_before_reading_the_checkpoint(tmp_path, untrained_ckpt, capsys):
    from fer_edge.models.artifact_writer import ExportError
    from fer_edge.export.exporter import export_model
    target = tmp_path / "artifacts"
    target.write_text("not a folder")
    start = time.perf_counter()
    with pytest.raises(ExportError, match="is a file, not a folder; pass a folder path"):
        export_model(checkpoint=str(untrained_ckpt), out_dir=str(target), log=lambda m: None)
    assert time.perf_counter() - start < FAST_S
    line, seconds = run_export_cli(["--checkpoint", untrained_ckpt, "--out", target], capsys)
    assert line.startswith(f"fer-export: error: --out {target}: is a file") and seconds < FAST_S
    assert target.read_text() == "not a folder"


def test_out_under_a_file_names_the_file(tmp_path, untrained_ckpt, capsys):
    (tmp_path / "plain").write_text("x")
    line, seconds = run_export_cli(["--checkpoint", untrained_ckpt, "--out", tmp_path / "plain" / "sub"], capsys)
    assert f"because {tmp_path / 'plain'} is a file" in line and seconds < FAST_S


def test_unwritable_out_is_refused_with_a_real_write(tmp_path, untrained_ckpt, monkeypatch):
    """Tests run as root, which chmod cannot stop; the check makes a real temp file, so make that fail."""
    from fer_edge.export import exporter
    from fer_edge.models import artifact_writer

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(artifact_writer.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(exporter.ExportError, match=r"cannot write in .*Permission denied.*folder you can write to"):
        exporter.export_model(checkpoint=str(untrained_ckpt), out_dir=str(tmp_path / "new" / "out"))
    assert not (tmp_path / "new").exists()


def _sysfs_refuses_files() -> bool:
    import tempfile
    try:
        with tempfile.NamedTemporaryFile(dir="/sys"):
            return False
    except OSError:
        return True


@pytest.mark.skipif(not _sysfs_refuses_files(), reason="needs /sys, where sysfs refuses new files even to root")
def test_read_only_filesystem_is_refused(untrained_ckpt, capsys):
    line, seconds = run_export_cli(["--checkpoint", untrained_ckpt, "--out", "/sys/fer-edge-test-out"], capsys)
    assert "cannot write in /sys" in line and seconds < FAST_S


# ------------------------------------------------------------------ 1. inputs, before any model is built
def test_missing_inputs_fail_fast_and_write_nothing(tmp_path, untrained_ckpt, capsys):
    out = tmp_path / "out"
    cases = [
        (["--checkpoint", tmp_path / "nope.pt"], "nope.pt: no such checkpoint file"),
        (["--checkpoint", tmp_path], "is a folder, not a checkpoint file"),
        (["--checkpoint", untrained_ckpt, "--parity-data", tmp_path / "faces.npz"],
         "--parity-data " + str(tmp_path / "faces.npz") + ": no such file or folder"),
        (["--checkpoint", untrained_ckpt, "--parity-count", "0"], "--parity-count 0: must be 1 or more"),
        (["--checkpoint", untrained_ckpt, "--int8", "--calib", tmp_path / "calib"], "--calib PATH"),
        (["--checkpoint", untrained_ckpt, "--engine", "--batch", "8:4:1"], "batch profile 8:4:1 (--batch): need 1 <= min"),
    ]
    for argv, needle in cases:
        line, seconds = run_export_cli(argv + ["--out", out], capsys)
        assert needle in line, line
        assert seconds < FAST_S, (argv, seconds)
        assert not out.exists()


def test_bad_calibration_sets_fail_before_the_fp32_export(tmp_path, untrained_ckpt, synthetic_npz, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    few = write_images(tmp_path / "few", 20)
    enough = write_images(tmp_path / "enough", 80)
    common = ["--checkpoint", untrained_ckpt, "--parity-data", synthetic_npz, "--out", out, "--int8"]
    cases = [
        (["--calib", tmp_path / "empty"], "no images found"),
        (["--calib", junk], "a.png: not a readable image"),
        (["--calib", few], "has 20 images but --calib-count asks for 512; pass --calib-count 20"),
        (["--calib", enough, "--calib-count", "64"], "only 16 images are left after taking 64"),
        (["--calib", enough, "--calib-count", "64", "--val", tmp_path / "val"], "--val " + str(tmp_path / "val")),
    ]
    for argv, needle in cases:
        line, seconds = run_export_cli(common + argv, capsys)
        assert needle in line, line
        assert seconds < FAST_S, (argv, seconds)
        assert not out.exists()


def test_calibration_faces_are_read_once_and_passed_on(tmp_path, untrained_ckpt, synthetic_npz, monkeypatch):
    """The faces the up-front check reads are the ones export_int8 calibrates on: no second read."""
    import types
    from fer_edge.calibration import int8_export, sources
    from fer_edge.cli import int8_args as int8_cli
    from fer_edge.export import exporter
    from fer_edge.cli.export import main
    reads, seen = [], {}
    real_load = sources.load_source
    monkeypatch.setattr(sources, "load_source", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    fp32 = tmp_path / "o" / "m_fp32.onnx"
    monkeypatch.setattr(exporter, "export_checked", lambda inputs, **k: {
        "fp32": types.SimpleNamespace(path=fp32, sidecar=Path(str(fp32) + ".json"))})

    def fake_int8(fp32_path, options, calibration, **kwargs):
        seen["calibration"] = calibration
        return tmp_path / "o" / "m_int8.onnx"
    monkeypatch.setattr(int8_cli, "export_int8", fake_int8)
    assert main(["--checkpoint", str(untrained_ckpt), "--out", str(tmp_path / "o"), "--parity-data",
                 str(synthetic_npz), "--int8", "--calib", str(synthetic_npz), "--calib-count", "64"]) == 0
    assert reads == [str(synthetic_npz)]
    calibration = seen["calibration"]
    assert isinstance(calibration, int8_export.CalibrationSet)
    assert len(calibration.calib) == 64 and calibration.held_apart and len(calibration.val) == 300 - 64


# ------------------------------------------------------------------ 2. corrupt vs pickled checkpoints
@pytest.mark.parametrize("name, reason", [("random.pt", "Unsupported operand"), ("truncated.pt", "zip archive"),
                                          ("empty.pt", "is empty (0 bytes)")])
def test_corrupt_checkpoint_never_asks_for_allow_pickle(bad_files, name, reason):
    from fer_edge.models.checkpoint import CheckpointError, load_checkpoint
    for allow_pickle in (False, True):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad_files / name, allow_pickle=allow_pickle)
        text = str(err.value)
        assert "--allow-pickle" not in text
        assert ("corrupt" in text or "copy" in text) and str(bad_files / name) in text
        if not allow_pickle:
            assert reason in text


def test_real_pickle_names_the_global_and_the_opt_in(bad_files):
    from fer_edge.models.checkpoint import CheckpointError, load_checkpoint
    with pytest.raises(CheckpointError, match=r"\(argparse\.Namespace\).*re-run with --allow-pickle"):
        load_checkpoint(bad_files / "namespace.pt")
    with pytest.raises(CheckpointError, match="no state_dict found"):  # loads with the opt-in; its state_dict is {}
        load_checkpoint(bad_files / "namespace.pt", allow_pickle=True)


def test_corrupt_checkpoint_cli_with_allow_pickle_is_one_line(bad_files, capsys, tmp_path):
    line, _ = run_export_cli(["--checkpoint", bad_files / "random.pt", "--allow-pickle", "--out", tmp_path / "o"],
                             capsys)
    assert "not a readable PyTorch checkpoint" in line and "--allow-pickle" not in line


# ------------------------------------------------------------------ 3. architecture mismatch
def test_b2_weights_with_b0_arch_name_the_fit(b2_state_dict, tmp_path, capsys):
    from fer_edge.models.checkpoint import CheckpointError
    from fer_edge.export.exporter import export_model
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        export_model(checkpoint=str(b2_state_dict), arch="tf_efficientnetv2_b0", img_size=32,
                     out_dir=str(tmp_path / "o"), log=lambda m: None)
    assert time.perf_counter() - start < FAST_S
    text = str(err.value)
    assert "does not fit tf_efficientnetv2_b0" in text
    assert "325 of its 462 tensors have other shapes" in text                  # the count
    assert "blocks.2.0.conv_pwl.weight: checkpoint 56x128x1x1, tf_efficientnetv2_b0 48x128x1x1" in text
    assert "Its tensors fit tf_efficientnetv2_b2: export with --arch tf_efficientnetv2_b2" in text
    line, _ = run_export_cli(["--checkpoint", b2_state_dict, "--arch", "tf_efficientnetv2_b0", "--img-size", "32",
                              "--out", tmp_path / "o"], capsys)
    assert "--arch tf_efficientnetv2_b2" in line
    assert not (tmp_path / "o").exists()


def test_weights_of_no_known_arch_say_so(b2_state_dict, tmp_path):
    import torch
    from fer_edge.models.checkpoint import CheckpointError
    from fer_edge.export.exporter import check_export_inputs
    state = torch.load(b2_state_dict, weights_only=True)
    del state["blocks.0.0.conv.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="fit none of tf_efficientnetv2_b0.*pass --arch"):
        check_export_inputs(checkpoint=str(tmp_path / "partial.pt"), arch="tf_efficientnetv2_b0", img_size=32,
                            out_dir=str(tmp_path / "o"))


def test_unknown_arch_lists_close_names(untrained_ckpt, tmp_path, capsys):
    import torch
    from fer_edge.models.checkpoint import CheckpointError
    from fer_edge.models.factory import check_arch_name
    with pytest.raises(CheckpointError, match=r"'tf_efficientnet_v2_b0' is not a timm model; did you mean one of "
                                              r"tf_efficientnetv2_b0"):
        check_arch_name("tf_efficientnet_v2_b0")
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(untrained_ckpt, weights_only=True)["state_dict"], plain)
    line, _ = run_export_cli(["--checkpoint", plain, "--arch", "efficientnetv2_b0x", "--img-size", "32",
                              "--out", tmp_path / "o"], capsys)
    assert "is not a timm model; did you mean" in line


# ------------------------------------------------------------------ 5. temp files and kills
def test_write_artifact_writes_nothing_when_the_sidecar_cannot_be_written(tmp_path, monkeypatch):
    """write_artifact writes both temp files before renaming either: a failure while writing them leaves no
    artifact, no sidecar and no temp file."""
    from fer_edge.models import artifact_writer as artifact_io
    from fer_edge.runtime.contract import ModelContract
    contract = ModelContract(arch="tf_efficientnetv2_b0", labels=FER2013_LABELS, input_size=32, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5])
    real_write = artifact_io._write_temp

    def fail_on_sidecar(path, data):
        if str(path).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real_write(path, data)
    monkeypatch.setattr(artifact_io, "_write_temp", fail_on_sidecar)
    with pytest.raises(OSError):
        artifact_io.write_artifact(tmp_path / "m.onnx", b"payload", contract, "onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_write_time_is_one_clear_error(tmp_path, monkeypatch):
    from fer_edge.export import exporter
    from fer_edge.runtime.contract import ModelContract
    contract = ModelContract(arch="tf_efficientnetv2_b0", labels=FER2013_LABELS, input_size=32, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5])

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    from fer_edge.models import artifact_writer
    monkeypatch.setattr(artifact_writer, "write_artifact", full)
    with pytest.raises(exporter.ExportError, match=r"cannot write .*m\.onnx \(No space left on device\); free some "
                                                   r"space or pass another --out"):
        exporter.write_export_artifact(tmp_path / "m.onnx", b"x", contract)


KILL_DRIVER = textwrap.dedent('''
    """Run fer-export and SIGKILL it at the Nth os.replace (after it) or os.fsync (before it) of the artifact writer."""
    import os, signal, sys, types
    from fer_edge.models import artifact_writer as artifact_io
    call, count = sys.argv[1], int(sys.argv[2])
    seen = [0]
    def wrapped(*args):
        seen[0] += 1
        if call == "fsync" and seen[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        result = getattr(os, call)(*args)
        if call == "replace" and seen[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    proxy = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    setattr(proxy, call, wrapped)
    artifact_io.os = proxy
    from fer_edge.cli.export import main
    sys.exit(main(sys.argv[3:]))
''')


def final_names(out: Path):
    """Files under their final names: the writer's temp files are hidden (.name.XXXX.tmp)."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _check_final_files(out: Path) -> None:
    """Every sidecar vouches for exactly its artifact's bytes; an artifact without one is complete ONNX."""
    import onnx
    for artifact in out.glob("*.onnx"):
        sidecar = Path(str(artifact) + ".json")
        if sidecar.exists():
            record = json.loads(sidecar.read_text())["artifact"]
            data = artifact.read_bytes()
            assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
        else:
            keys = {p.key for p in onnx.load(str(artifact)).metadata_props}
            assert "fer_edge.contract" in keys
    for sidecar in out.glob("*.json"):
        assert Path(str(sidecar)[:-5]).exists(), f"{sidecar} has no artifact"


@pytest.mark.slow
def test_sigkill_mid_export_never_leaves_a_half_file_and_stale_temps_are_cleaned(
        fitted_checkpoint, synthetic_npz, tmp_path):
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(fitted_checkpoint), "--parity-data", str(synthetic_npz), "--parity-count", "20",
            "--fp16", "--out", str(out)]

    def run_killed(call: str, count: int) -> None:
        proc = subprocess.run([sys.executable, str(driver), call, str(count)] + argv, capture_output=True,
                              text=True, timeout=300, cwd=REPO)
        assert proc.returncode == -9, proc.stderr
        _check_final_files(out)

    run_killed("fsync", 1)                                   # killed while writing the first temp file
    temps = list(out.glob(".*.tmp"))
    assert len(temps) == 1 and final_names(out) == []
    # A live writer's temp file (its PID in the name) and a young one without a PID are kept.
    live = out / f".other-writer.onnx.{os.getpid()}-abc.tmp"
    live.write_bytes(b"a concurrent writer's file")
    young = out / ".older-format.onnx.abc.tmp"
    young.write_bytes(b"no PID in the name, less than an hour old")
    run_killed("replace", 3)                                 # FP32 pair written, FP16 renamed, its sidecar not
    assert not temps[0].exists() and live.exists() and young.exists()   # the killed run's writer is gone
    assert final_names(out) == ["tf_efficientnetv2_b0_32px_fer2013_fp16.onnx", "tf_efficientnetv2_b0_32px_fer2013_fp32.onnx",
                     "tf_efficientnetv2_b0_32px_fer2013_fp32.onnx.json"]
    run_killed("replace", 2)                                 # the FP32 pair again, over the earlier one
    assert (out / "tf_efficientnetv2_b0_32px_fer2013_fp32.onnx.json").exists()


@pytest.mark.slow
def test_export_removes_stale_temp_files_of_a_killed_run(fitted_checkpoint, synthetic_npz, tmp_path, capsys):
    from fer_edge.cli.export import main
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh = out / ".x.onnx.abc.tmp", out / ".y.onnx.def.tmp"
    stale.write_bytes(b"\0" * 1024)
    fresh.write_bytes(b"\0" * 1024)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert main(["--checkpoint", str(fitted_checkpoint), "--parity-data", str(synthetic_npz), "--parity-count", "20",
                 "--out", str(out)]) == 0
    assert not stale.exists() and fresh.exists()
    _check_final_files(out)


# ------------------------------------------------------------------ 6. the other CLIs: one line, exit 2
def test_fer_train_errors_are_one_line(bad_files, tmp_path, capsys):
    from fer_edge.cli.train import main
    cli_error(capsys, main(["eval", "--weights", str(bad_files / "random.pt")]))
    cli_error(capsys, main(["ship", "--checkpoint", str(tmp_path / "nope.pt")]))
    (tmp_path / "bad.json").write_text("{not json")
    line = cli_error(capsys, main(["--config", str(tmp_path / "bad.json"), "--print-config"]))
    assert line.startswith("fer-train: error: --config") and "not valid JSON" in line
    line = cli_error(capsys, main(["--print-config", "--set", "nope=1"]))
    assert "--set nope: unknown config key" in line


def test_fer_demo_errors_exit_2(capsys):
    from fer_edge.cli.demo import main
    line = cli_error(capsys, main(["clip.mp4", "--max-frames", "0"]))
    assert line == "fer-demo: error: --max-frames must be >= 1"


def test_missing_export_extra_is_named_with_its_install_command_not_as_a_corrupt_file(tmp_path, capsys, monkeypatch):
    """A runtime-only install (no torch/safetensors) used to report the bundled weights as a corrupt file."""
    import importlib.util
    from fer_edge.models import checkpoint
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(checkpoint.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "safetensors") else real_find_spec(name, *a))
    line, _ = run_export_cli(["--out", tmp_path / "out"], capsys)
    assert "needs torch, safetensors" in line and "pip install torch==2.13.0" in line and "fer-edge[export]" in line
    assert "corrupt" not in line and not (tmp_path / "out").exists()
    with pytest.raises(checkpoint.BackendUnavailableError, match="reading the checkpoint w.pt needs torch"):
        (tmp_path / "w.pt").write_bytes(b"weights")
        checkpoint.load_checkpoint(tmp_path / "w.pt")
