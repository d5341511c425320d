"""Triton model repositories and the serving forms of an export (issue 13, the export half).

Every config.pbtxt is parsed with tritonclient's own model-config protobuf, so a misspelt field fails here as it
would fail the server; dims, dtypes, batch limits and label order are compared with the contract and the engine
sidecar. Plans use a fake engine file with a sidecar written by the real artifact writer (building a real plan
needs a GPU); one test uses a real TensorRT-RTX engine built on the CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_export_stack

pytestmark = needs_export_stack


@pytest.fixture(scope="module")
def model_config_pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2",
                               reason="needs the [triton] extra (pip install 'tritonclient[grpc]') to parse configs")


def parse(folder: Path, model_config_pb2):
    from google.protobuf import text_format
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def faces(synthetic_npz):
    from fer_edge.data.datasets import load_faces
    return load_faces(synthetic_npz)


@pytest.fixture(scope="module")
def variants(exported, faces, tmp_path_factory):
    """_u8, _probs and _u8_probs of the FP32 and FP16 exports."""
    from fer_edge.export.onnx_variants import requested_variants, write_variant
    out = tmp_path_factory.mktemp("variants")
    return {(precision, variant.suffix): write_variant(exported[precision].path, variant, faces, out, log=quiet)
            for precision in ("fp32", "fp16") for variant in requested_variants(True, True)}


def fake_plan(folder: Path, contract, *, version="10.16.0.72", flavour="tensorrt", batch=(1, 8, 32), dtype="FLOAT"):
    """An engine file and the sidecar fer-export --engine would write for it (profile, I/O, target)."""
    from fer_edge.models.artifact_writer import write_artifact
    dims = contract.input_dims()
    path = Path(folder) / "m_fp16_trt_b1-8-32.engine"
    write_artifact(path, b"serialized plan stand-in " * 40, contract, "engine", engine={
        "flavour": flavour, "version": version, "version_compatible": False, "hardware_compat": "none",
        "target": {"machine": "x86_64", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"},
        "profile": {contract.input_name: {k: [b] + dims for k, b in zip(("min", "opt", "max"), batch)}},
        "io": [{"name": contract.input_name, "mode": "input", "dtype": dtype, "shape": [-1] + dims},
               {"name": contract.output_name, "mode": "output", "dtype": "FLOAT", "shape": [-1, contract.num_classes]}],
        "rebuild_args": ["--engine", "--onnx", "m_fp16.onnx", "--out", str(folder), "--batch", "1:8:32",
                         "--trt", "tensorrt_rtx"]})
    return path


def assert_matches(folder: Path, config, artifact: Path, model_config_pb2, model_file="model.onnx"):
    """Config, labels, sidecar and model file all say what the artifact's contract says."""
    from fer_edge.runtime.contract import ModelContract
    sidecar = json.loads(Path(str(artifact) + ".json").read_text())
    contract = ModelContract.from_dict(sidecar["contract"])
    dtype_name = model_config_pb2.DataType.Name
    assert config.name == folder.name
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), dtype_name(inp.data_type)) == \
        (contract.input_name, contract.input_dims(), {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}[contract.dtype])
    assert (out.name, list(out.dims), dtype_name(out.data_type), out.label_filename) == \
        (contract.output_name, [contract.num_classes], "TYPE_FP32", "labels.txt")
    assert (folder / "labels.txt").read_text().splitlines() == contract.labels
    assert json.loads(config.parameters["fer_edge_contract"].string_value) == contract.to_dict()
    assert json.loads((folder / "fer_edge.json").read_text()) == sidecar
    assert sha256(folder / "1" / model_file) == sha256(artifact) == sidecar["artifact"]["sha256"]


# ---------------------------------------------------------------- ONNX models
def test_onnx_models_parse_and_match_their_contracts(exported, variants, tmp_path, model_config_pb2):
    from fer_edge.export.triton_repo import write_model_repository
    sources = [exported["fp32"].path, exported["fp16"].path, variants[("fp16", "_u8_probs")].path]
    for source in sources:
        folder = write_model_repository(source, tmp_path, log=quiet)
        config = parse(folder, model_config_pb2)
        assert_matches(folder, config, source, model_config_pb2)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] \
            == [(1, "KIND_AUTO")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer_emotion_fp16", "fer_emotion_fp16_u8_probs",
                                                          "fer_emotion_fp32"]


def test_options_reach_the_config(exported, tmp_path, model_config_pb2):
    from fer_edge.export.triton_repo import write_model_repository
    folder = write_model_repository(exported["fp16"].path, tmp_path, "faces", max_batch_size=16,
                                    preferred_batch_sizes=[8, 4], queue_delay_us=500, instances=2, kind="cpu",
                                    trt_accelerator=True, threads=1, log=quiet)
    config = parse(folder, model_config_pb2)
    assert (config.name, config.max_batch_size, list(config.dynamic_batching.preferred_batch_size)) == ("faces", 16, [4, 8])
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    group = config.instance_group[0]
    assert (group.count, group.kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert config.parameters["intra_op_thread_count"].string_value == "1"


def test_a_misspelt_field_fails_to_parse(exported, tmp_path, model_config_pb2):
    from google.protobuf import text_format
    from fer_edge.export.triton_repo import write_model_repository
    text = (write_model_repository(exported["fp32"].path, tmp_path, log=quiet) / "config.pbtxt").read_text()
    for right, wrong in (("max_batch_size", "max_batch_sise"), ("label_filename", "labels_filename"),
                         ("TYPE_FP32", "TYPE_FLOAT32"), ("KIND_AUTO", "KIND_ANY")):
        assert right in text
        with pytest.raises(text_format.ParseError):
            text_format.Parse(text.replace(right, wrong, 1), model_config_pb2.ModelConfig())


def test_contract_json_survives_quotes_backslashes_and_unicode(model_config_pb2):
    """The contract travels as a string parameter: labels with quotes, backslashes and non-ASCII come back intact."""
    from google.protobuf import text_format
    from fer_edge.export.triton_config import ModelConfigSpec, TensorConfig, render_config
    from fer_edge.runtime.contract import ModelContract
    contract = ModelContract(arch="a", labels=['say "cheese"', "back\\slash", "surprisé"], input_size=48, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5])
    text = render_config(ModelConfigSpec("m", 8, TensorConfig("input", "TYPE_FP32", [1, 48, 48]),
                                         TensorConfig("logits", "TYPE_FP32", [3], "labels.txt"),
                                         platform="onnxruntime_onnx", parameters={"fer_edge_contract": contract.to_json()}))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert ModelContract.from_json(config.parameters["fer_edge_contract"].string_value).labels == contract.labels


def test_python_platform_ships_the_model_file(variants, tmp_path, model_config_pb2):
    from fer_edge.export.triton_repo import PYTHON_MODEL, write_model_repository
    source = variants[("fp32", "_u8")].path
    folder = write_model_repository(source, tmp_path, platform="python", threads=2, log=quiet)
    config = parse(folder, model_config_pb2)
    assert_matches(folder, config, source, model_config_pb2)
    assert (config.backend, config.platform) == ("python", "")
    assert (folder / "1" / "model.py").read_bytes() == PYTHON_MODEL.read_bytes()


def test_onnx_refusals_write_nothing(exported, tmp_path):
    from fer_edge.export.triton_repo import TritonRepoError, write_model_repository
    source = exported["fp32"].path
    cases = [({"platform": "tensorrt"}, "serves TensorRT plans; build one first"),
             ({"platform": "python", "trt_accelerator": True}, "runs ONNX Runtime on the CPU"),
             ({"max_batch_size": 0}, r"max_batch_size 0 \(--triton-max-batch\)"),
             ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "must lie between 1 and max_batch_size"),
             ({"kind": "tpu"}, r"kind 'tpu' \(--triton-kind\)"),
             ({"instances": 0}, "instances 0"), ({"queue_delay_us": -1}, "cannot be negative")]
    for options, match in cases:
        with pytest.raises(TritonRepoError, match=match):
            write_model_repository(source, tmp_path, log=quiet, **options)
    with pytest.raises(TritonRepoError, match="model name 'a/b'"):
        write_model_repository(source, tmp_path, "a/b", log=quiet)
    tampered = tmp_path / "copy" / source.name
    tampered.parent.mkdir()
    shutil.copyfile(source, tampered)
    shutil.copyfile(str(source) + ".json", str(tampered) + ".json")
    with open(tampered, "r+b") as fh:           # same size, one byte changed: only the hash can tell
        fh.seek(len(fh.read()) // 2)
        fh.write(b"\x00")
    from fer_edge.runtime.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="sha256"):
        write_model_repository(tampered, tmp_path, log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]


# ---------------------------------------------------------------- TensorRT plans
def test_plan_batch_limits_dims_and_dtypes_come_from_the_engine_sidecar(variants, tmp_path, model_config_pb2):
    from fer_edge.export.triton_repo import write_model_repository
    contract = variants[("fp16", "_u8_probs")].contract
    plan = fake_plan(tmp_path, contract, batch=(1, 4, 16), dtype="UINT8")
    folder = write_model_repository(plan, tmp_path / "repo", server_trt="10.16.0.72", log=quiet)
    config = parse(folder, model_config_pb2)
    assert_matches(folder, config, plan, model_config_pb2, model_file="model.plan")
    assert (config.platform, config.max_batch_size, folder.name) == ("tensorrt_plan", 16, "fer_emotion_fp16_u8_probs_plan")
    assert config.optimization.cuda.graphs is True
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert parse(write_model_repository(plan, tmp_path / "repo", "small", max_batch_size=8, log=quiet),
                 model_config_pb2).max_batch_size == 8


def test_a_plan_for_another_tensorrt_is_refused_with_the_fix(exported, tmp_path):
    from fer_edge.export.triton_repo import TritonRepoError, write_model_repository
    plan = fake_plan(tmp_path, exported["fp16"].contract, version="10.16.0.72")
    repo = tmp_path / "repo"
    for server in ("10.15", "10.16.1", "10.8.0.43", "11.0"):
        with pytest.raises(TritonRepoError) as refused:
            write_model_repository(plan, repo, server_trt=server, log=quiet)
        message = str(refused.value)
        assert f"built with TensorRT 10.16.0.72 and the server runs TensorRT {server}" in message
        assert "only runs on the TensorRT version that built it" in message
        assert "--trt tensorrt" in message and "--trt tensorrt_rtx" not in message   # the rebuild command
        assert "serve the ONNX instead" in message
    assert not repo.exists()
    notes = []
    write_model_repository(plan, repo, server_trt="10.16", log=notes.append)   # names the release line only
    assert any("the patch release must match too" in n for n in notes)
    notes.clear()
    write_model_repository(plan, repo, log=notes.append)
    assert any("Pass --triton-trt VERSION" in n for n in notes) and any("NVIDIA L4" in n for n in notes)
    with pytest.raises(TritonRepoError, match="not a TensorRT version"):
        write_model_repository(plan, repo, server_trt="latest", log=quiet)


def test_plan_refusals(exported, tmp_path):
    from fer_edge.export.triton_repo import TritonRepoError, write_model_repository
    contract = exported["fp16"].contract
    cases = [(fake_plan(tmp_path / "a", contract, batch=(2, 8, 32)), {}, "profile starts at batch 2"),
             (fake_plan(tmp_path / "b", contract), {"max_batch_size": 64}, "exceeds the engine profile's max batch 32"),
             (fake_plan(tmp_path / "c", contract, flavour="tensorrt_rtx", version="1.7.1.116"), {},
              "runs plans of full TensorRT only"),
             (fake_plan(tmp_path / "d", contract, dtype="UINT8"), {}, "the engine input is TYPE_UINT8"),
             (fake_plan(tmp_path / "e", contract), {"kind": "cpu"}, "plans run on GPUs only"),
             (fake_plan(tmp_path / "f", contract), {"platform": "onnxruntime"}, "served by platform tensorrt"),
             (fake_plan(tmp_path / "g", contract), {"trt_accelerator": True}, "a plan already is TensorRT")]
    for plan, options, match in cases:
        with pytest.raises(TritonRepoError, match=match):
            write_model_repository(plan, tmp_path / "repo", log=quiet, **options)
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_a_real_tensorrt_rtx_engine_is_refused_and_its_records_fit(variants, tmp_path, model_config_pb2):
    """TensorRT-RTX builds on the CPU: its plan is refused for Triton; relabelled as full TensorRT (the sidecar's
    engine section is not hashed), the real build's profile and I/O records give a valid config."""
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx to build an engine on the CPU")
    from fer_edge.export.engine_build import BuildOptions, build_engine
    from fer_edge.export.triton_repo import TritonRepoError, write_model_repository
    built = build_engine(variants[("fp16", "_u8_probs")].path, out_dir=tmp_path, options=BuildOptions(batch=(1, 4, 8)),
                         flavour="tensorrt_rtx", log=quiet)
    with pytest.raises(TritonRepoError, match="built with tensorrt_rtx"):
        write_model_repository(built.path, tmp_path / "repo", log=quiet)
    sidecar = json.loads(built.sidecar.read_text())
    sidecar["engine"].update(flavour="tensorrt", version="10.16.0.72")
    built.sidecar.write_text(json.dumps(sidecar))
    folder = write_model_repository(built.path, tmp_path / "repo", server_trt="10.16.0.72", log=quiet)
    config = parse(folder, model_config_pb2)
    assert_matches(folder, config, built.path, model_config_pb2, model_file="model.plan")
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [32, 32, 1]


# ---------------------------------------------------------------- writing a folder at once
def test_a_failed_write_keeps_the_previous_model_and_leaves_no_temp_folders(exported, tmp_path, monkeypatch):
    from fer_edge.export import triton_repo
    repo = tmp_path / "repo"
    folder = triton_repo.write_model_repository(exported["fp32"].path, repo, "m", log=quiet)
    before = {p.relative_to(folder): sha256(p) for p in folder.rglob("*") if p.is_file()}

    def disk_full(src, dst, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(triton_repo.shutil, "copyfile", disk_full)
    with pytest.raises(triton_repo.TritonRepoError, match="No space left on device"):
        triton_repo.write_model_repository(exported["fp16"].path, repo, "m", log=quiet)
    assert {p.relative_to(folder): sha256(p) for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in repo.iterdir()] == ["m"] and [p.name for p in tmp_path.iterdir()] == ["repo"]


def test_a_killed_writers_temp_folder_is_removed(exported, tmp_path):
    from fer_edge.export.triton_repo import write_model_repository
    repo = tmp_path / "repo"
    stale = tmp_path / ".repo.m.999999999-abc.tmp"       # PID that cannot exist
    (stale / "1").mkdir(parents=True)
    write_model_repository(exported["fp32"].path, repo, "m", log=quiet)
    assert not stale.exists() and (repo / "m" / "1" / "model.onnx").is_file()


# ---------------------------------------------------------------- serving forms
def test_uint8_input_export_matches_the_runtime_path(exported, variants, faces):
    """Folded /255, mean and std: the same outputs as the float model fed by prepare_batch, on crops that need
    resizing too; the runtime feeds it uint8 NHWC, a quarter of the bytes."""
    import cv2
    from fer_edge import runtime
    u8 = variants[("fp32", "_u8")]
    assert (u8.contract.dtype, u8.contract.layout, u8.contract.output_kind) == ("uint8", "NHWC", "logits")
    record = json.loads(u8.sidecar.read_text())["parity"]
    assert record["passed"] and record["top1_agreement"] == 1.0 and record["max_abs_logit_diff"] <= 1e-5
    assert record["images"] == len(faces) and record["reference"].endswith("on prepare_batch tensors")
    crops = [cv2.resize(face, (45, 51), interpolation=cv2.INTER_CUBIC) for face in faces.images[:40]]
    with runtime.load(exported["fp32"].path) as plain, runtime.load(u8.path) as folded:
        tensor = folded.preprocess(crops)
        assert tensor.dtype == np.uint8 and tensor.shape == (40, 32, 32, 1)
        assert tensor.nbytes * 4 == plain.preprocess(crops).nbytes
        np.testing.assert_allclose(folded.predict_proba(crops), plain.predict_proba(crops), atol=1e-6)


def test_probabilities_export_rows_sum_to_one(exported, variants, faces):
    from fer_edge import runtime
    for precision in ("fp32", "fp16"):
        for suffix in ("_probs", "_u8_probs"):
            artifact = variants[(precision, suffix)]
            assert (artifact.contract.output_kind, artifact.contract.output_name) == ("probabilities", "probabilities")
            with runtime.load(artifact.path) as probs, runtime.load(exported[precision].path) as logits:
                raw = probs.infer(probs.preprocess(faces.images[:64]))
                np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-5)
                assert (raw >= 0).all()
                np.testing.assert_array_equal(raw.argmax(1), logits.predict_proba(faces.images[:64]).argmax(1))


def test_a_wrong_fold_fails_parity_and_writes_nothing(exported, faces, tmp_path, monkeypatch):
    from fer_edge.export import onnx_variants
    from fer_edge.models.artifact_writer import ExportError
    right = onnx_variants.normalization
    monkeypatch.setattr(onnx_variants, "normalization",
                        lambda c: right(dataclasses.replace(c, mean=[0.8], std=[0.3])))
    with pytest.raises(ExportError, match="parity with .* failed, nothing written"):
        onnx_variants.write_variant(exported["fp32"].path, onnx_variants.Variant(uint8_input=True), faces, tmp_path,
                                    log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_serving_forms_are_made_from_the_plain_export_only(variants, faces, tmp_path):
    from fer_edge.export.onnx_variants import Variant, write_variant
    from fer_edge.models.artifact_writer import ExportError
    with pytest.raises(ExportError, match="already a serving form"):
        write_variant(variants[("fp32", "_probs")].path, Variant(uint8_input=True), faces, tmp_path, log=quiet)


def test_contract_input_formats():
    from fer_edge.runtime.contract import ModelContract, shape_problems
    from fer_edge.runtime.errors import ContractError
    base = dict(arch="a", labels=["x", "y"], input_size=48, channels=3, color_order="BGR", mean=[0.5] * 3, std=[0.5] * 3)
    assert ModelContract(**base).input_dims() == [3, 48, 48]
    u8 = ModelContract(**base, dtype="uint8", layout="NHWC").validate()
    assert u8.input_dims() == [48, 48, 3] and shape_problems(u8, ["batch", 48, 48, 3], ["batch", 2], "graph") == []
    assert shape_problems(u8, ["batch", 3, 48, 48], [], "graph")      # an NCHW graph under an NHWC contract
    for dtype, layout in (("uint8", "NCHW"), ("float32", "NHWC"), ("float16", "NCHW")):
        with pytest.raises(ContractError, match="must be float32/NCHW or uint8/NHWC"):
            ModelContract(**base, dtype=dtype, layout=layout).validate()


# ---------------------------------------------------------------- fer-export
def test_cli_writes_a_repository_from_existing_artifacts(exported, synthetic_npz, tmp_path, capsys, model_config_pb2):
    from fer_edge.cli.export import main
    rc = main(["--from", str(exported["fp16"].path), "--triton", str(tmp_path / "models"), "--uint8-input",
               "--probabilities", "--out", str(tmp_path / "art"), "--parity-data", str(synthetic_npz),
               "--parity-count", "64", "--triton-preferred-batch", "4,8", "--triton-max-batch", "16"])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["fer_emotion_fp16", "fer_emotion_fp16_probs", "fer_emotion_fp16_u8", "fer_emotion_fp16_u8_probs"]
    for name in names:
        config = parse(tmp_path / "models" / name, model_config_pb2)
        assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert len(list((tmp_path / "art").glob("*.onnx"))) == 3


def test_cli_refusals(exported, tmp_path, capsys):
    from fer_edge.cli.export import main
    fp32 = str(exported["fp32"].path)
    cases = [(["--from", fp32], "add one of them"),
             (["--from", fp32, "--triton", str(tmp_path), "--fp16"], "drop ['--fp16']"),
             (["--from", fp32, "--from", fp32, "--triton", str(tmp_path / "r")], "would both become Triton model"),
             (["--from", str(tmp_path / "none.onnx"), "--triton", str(tmp_path)], "no such .onnx or TensorRT engine"),
             (["--from", fp32, "--triton", str(tmp_path), "--triton-trt-accelerator", "--triton-platform", "python"],
              "runs ONNX Runtime on the CPU")]
    for argv, match in cases:
        assert main(argv) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_export_then_repository_and_deepstream(fitted_checkpoint, synthetic_npz, tmp_path, capsys,
                                                   model_config_pb2):
    """The export path: the ONNX files one fer-export run writes become the repository's models."""
    from fer_edge.cli.export import main
    rc = main(["--checkpoint", str(fitted_checkpoint), "--fp16", "--probabilities", "--out", str(tmp_path / "art"),
               "--parity-data", str(synthetic_npz), "--triton", str(tmp_path / "models"),
               "--deepstream", str(tmp_path / "ds")])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["fer_emotion_fp16", "fer_emotion_fp16_probs", "fer_emotion_fp32", "fer_emotion_fp32_probs"]
    for name in names:
        assert parse(tmp_path / "models" / name, model_config_pb2).name == name
    config = (tmp_path / "ds" / "config_infer_fer.txt").read_text()
    assert "\nonnx-file=tf_efficientnetv2_b0_32px_fer2013_fp16_probs.onnx\n" in config


def test_cli_refuses_an_engine_the_server_cannot_load_before_exporting(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="needs a TensorRT flavour that can build (here tensorrt-rtx)")
    from types import SimpleNamespace
    from fer_edge.cli import serving_args
    from fer_edge.cli.export import main
    argv = ["--fp16", "--engine", "--triton", str(tmp_path / "models"), "--out", str(tmp_path / "art")]
    assert main(argv + ["--trt", "tensorrt_rtx"]) == 2
    assert "runs only full-TensorRT plans" in capsys.readouterr().err
    monkeypatch.setattr(serving_args, "import_builder", lambda name: SimpleNamespace(name="tensorrt", version="10.3.0.26"))
    assert main(argv + ["--triton-trt", "10.16"]) == 2
    assert "built with TensorRT 10.3.0.26 and the server runs TensorRT 10.16" in capsys.readouterr().err
    assert not (tmp_path / "art").exists() and not (tmp_path / "models").exists()


def test_a_major_only_server_version_is_refused(tmp_path):
    from fer_edge.export.triton_repo import TritonRepoError, check_plan_for_server
    sidecar = {"engine": {"flavour": "tensorrt", "version": "10.16.0.72", "target": {}}}
    with pytest.raises(TritonRepoError, match="at least major.minor"):
        check_plan_for_server(tmp_path / "x.plan", sidecar, "10")


def test_replacing_a_model_folder_is_one_atomic_swap_on_linux(tmp_path):
    import sys
    from fer_edge.export.atomic_dir import exchange, write_folder_atomically
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("A"), (b / "x").write_text("B")
    swapped = exchange(a, b)
    if sys.platform.startswith("linux"):
        assert swapped, "renameat2(RENAME_EXCHANGE) is in glibc >= 2.28 and every local Linux filesystem"
    if swapped:
        assert (a / "x").read_text() == "B" and (b / "x").read_text() == "A"
    model = tmp_path / "repo" / "m"
    for version in ("1", "2"):
        write_folder_atomically(model, lambda d, v=version: (d / "v").write_text(v))
    assert (model / "v").read_text() == "2"
    assert sorted(p.name for p in model.parent.iterdir()) == ["m"]       # no temp or old folders left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
