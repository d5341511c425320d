"""The Triton client backend against a real `tritonserver` (2.51, from the nvidia-pytriton wheel; see
tests/triton_server.py) serving repositories written by fer-export's writer through the Python-backend model
(export/triton_python_model.py, ONNX Runtime inside the server).

Proves: READY; the server's logits equal ONNX Runtime in-process on the same batch (HTTP and gRPC); FerModel
through triton:// predicts what the local model predicts; 8 concurrent single-face clients each get their own
face's answer while the server's dynamic batcher runs them in batches (its statistics: faces / executions > 1);
a server killed under running clients, an unreachable port, a missing model, a missing or contradicting
contract and a slow server each end in a clear error, never a hang.
"""
from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_faces
from fer_edge.runtime import load
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError

sys.path.insert(0, str(Path(__file__).parent))
from triton_server import ServerUnavailable, TritonServer, free_ports, install  # noqa: E402

pytest.importorskip("tritonclient.http", reason="needs the Triton client: pip install 'fer-edge[triton]'")

CLIENTS = 8
REQUESTS_PER_CLIENT = 12
SLOW_QUEUE_US = 3_000_000       # "fer_slow" holds a lone request this long, waiting for a batch of 8


def _write(write_model_repository, onnx: Path, repo: Path, name: str, **options) -> Path:
    return write_model_repository(onnx, repo, name, platform="python", log=lambda m: None, **options)


def _edit_config(model_dir: Path, name: str, edit) -> None:
    """A copy of a written model under another name, its config.pbtxt changed by `edit` (a hand-edited config)."""
    target = model_dir.parent / name
    shutil.copytree(model_dir, target)
    config = target / "config.pbtxt"
    text = config.read_text().replace(f'name: "{model_dir.name}"', f'name: "{name}"')
    config.write_text(edit(text))


@pytest.fixture(scope="session")    # session: pytest sets these up first, so no export runs before a skip
def installed():
    """The server's files, before anything is exported: a machine that cannot run it skips in seconds."""
    try:
        return install()
    except ServerUnavailable as exc:
        pytest.skip(f"cannot install the real tritonserver here: {exc}")


@pytest.fixture(scope="module")
def repository(installed, probe_exported, synthetic_npz, tmp_path_factory) -> Path:
    from fer_edge.data.datasets import load_faces
    from fer_edge.export.onnx_variants import Variant, write_variant
    from fer_edge.export.triton_repo import write_model_repository
    onnx = probe_exported["fp32"].path
    repo = tmp_path_factory.mktemp("triton_repo")
    fer = _write(write_model_repository, onnx, repo, "fer", max_batch_size=16, queue_delay_us=2000)
    u8 = write_variant(onnx, Variant(uint8_input=True, probabilities=True), load_faces(synthetic_npz, limit=64),
                       tmp_path_factory.mktemp("u8"), log=lambda m: None)
    _write(write_model_repository, u8.path, repo, "fer_u8_probs", max_batch_size=16)
    _write(write_model_repository, onnx, repo, "fer_slow", max_batch_size=16, preferred_batch_sizes=[8],
           queue_delay_us=SLOW_QUEUE_US)
    _edit_config(fer, "fer_no_contract", lambda t: re.sub(r'parameters \{\s*key: "fer_edge_contract".*\n', "", t))
    _edit_config(fer, "fer_wrong_dims", lambda t: re.sub(r"dims: \[ 1, 32, 32 \]", "dims: [ 1, 48, 48 ]", t, count=1))
    return repo


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    with TritonServer(repository, log_dir=tmp_path_factory.mktemp("triton_log")) as running:
        yield running


@pytest.fixture(scope="module")
def local(probe_exported):
    with load(probe_exported["fp32"].path) as model:
        yield model


def _faces(n: int, seed: int):
    return synthetic_faces(n, size=32, seed=seed)


# -- no server needed -----------------------------------------------------------------------------------------
def test_missing_tritonclient_names_the_extra(monkeypatch):
    from fer_edge.runtime import triton_backend
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'fer-edge\[triton\]'"):
        triton_backend.import_client("triton")


@pytest.mark.parametrize("source", ["triton://host:8000/", "triton://:8000/fer", "triton://host:80x/fer",
                                    "triton://host:8000/a/b", "triton://host:8000/fer?version=2"])
def test_malformed_addresses_are_refused(source):
    with pytest.raises(ModelLoadError, match="triton://HOST:PORT/MODEL"):
        load(source)


def test_default_ports_and_ipv6():
    from fer_edge.runtime.triton_backend import parse_source
    assert parse_source("triton://gpu-node/fer") == ("triton", "gpu-node:8000", "fer")
    assert parse_source("triton+grpc://[::1]/fer") == ("triton+grpc", "[::1]:8001", "fer")


def test_unreachable_server_is_a_clear_error_at_once():
    port = free_ports(1)[0]         # nothing listens there
    for scheme in ("triton", "triton+grpc"):
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=f"cannot reach a Triton server at 127.0.0.1:{port}"):
            load(f"{scheme}://127.0.0.1:{port}/fer", timeout_s=5)
        assert time.monotonic() - start < 5


# -- against the real server ----------------------------------------------------------------------------------
def test_server_is_ready_with_the_written_models(server):
    import urllib.request
    for model in ("fer", "fer_slow", "fer_u8_probs", "fer_no_contract", "fer_wrong_dims"):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/ready", timeout=5) as r:
            assert r.status == 200


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_server_logits_equal_onnx_runtime_in_process(server, local, grpc):
    faces, _ = _faces(13, seed=3)
    batch = local.preprocess(faces)
    with load(server.url("fer", grpc=grpc)) as remote:
        assert remote.max_batch == 16 and remote.contract.to_dict() == local.contract.to_dict()
        served = remote.infer(batch)
    # Same ONNX Runtime version and batch on both sides: the same kernels, so the same numbers.
    np.testing.assert_allclose(served, local.infer(batch), rtol=0, atol=1e-5)


def test_fermodel_through_triton_predicts_like_the_local_model(server, local):
    faces, truth = _faces(40, seed=7)            # 40 > max_batch 16: FerModel splits into 3 requests
    with load(server.url("fer"), max_batch=16) as remote:
        served = remote.predict(list(faces))      # a list of crops: preprocessing runs on this side
        expected = local.predict(list(faces))
    assert [p.label for p in served] == [p.label for p in expected]
    assert [p.index for p in served] == truth.tolist()      # the probe model is right on every synthetic face
    np.testing.assert_allclose([p.probabilities for p in served], [p.probabilities for p in expected], atol=1e-5)


def test_uint8_probabilities_model_is_sent_pixels_and_returns_probabilities(server, local):
    """The serving form for non-Python clients: resized uint8 NHWC pixels go over the wire (a quarter of the
    float32 bytes), the graph normalises, and the softmax output passes FerModel's probability check."""
    faces, truth = _faces(20, seed=4)
    with load(server.url("fer_u8_probs", grpc=True)) as remote:
        assert remote.backend.datatype == "UINT8" and remote.contract.output_kind == "probabilities"
        batch = remote.preprocess(faces)
        assert batch.dtype == np.uint8 and batch.shape == (20, 32, 32, 1)
        probs = remote.predict_proba(faces)
    np.testing.assert_allclose(probs, local.predict_proba(faces), atol=1e-4)
    assert (probs.argmax(1) == truth).all()


def test_fer_pipeline_runs_unchanged_on_a_triton_url(server, probe_exported):
    """A real photo through detection, crop, classification: the served model answers like the local one."""
    from fer_edge.pipeline import FerPipeline
    from real_faces import astronaut_bgr
    frame = astronaut_bgr()
    served = FerPipeline(server.url("fer"), threads=2).process(frame)      # threads: the detector's
    expected = FerPipeline(probe_exported["fp32"].path, threads=2).process(frame)
    assert len(served) == len(expected) == 1
    assert served[0].label == expected[0].label
    np.testing.assert_allclose(served[0].probabilities, expected[0].probabilities, atol=1e-5)


def test_concurrent_single_face_clients_get_their_own_answers_in_batches(server, local):
    faces, truth = _faces(CLIENTS * REQUESTS_PER_CLIENT, seed=11)
    expected = local.infer(local.preprocess(faces))
    models = [load(server.url("fer", grpc=i % 2 == 1), timeout_s=10) for i in range(CLIENTS)]   # one per camera
    before = models[0].backend.statistics()
    answers = np.full((len(faces), expected.shape[1]), np.nan, np.float32)
    errors, start = [], threading.Barrier(CLIENTS)

    def camera(i: int) -> None:
        try:
            start.wait(timeout=10)
            for k in range(i, len(faces), CLIENTS):   # client i sends faces i, i+8, ...: one face per request
                answers[k] = models[i].infer(models[i].preprocess(faces[k]))[0]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    after = models[0].backend.statistics()
    for m in models:
        m.close()
    # Each face's own logits (a crossed answer would match another face), and its true class.
    np.testing.assert_allclose(answers, expected, rtol=0, atol=1e-4)
    assert (answers.argmax(1) == truth).all()
    faces_run = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    assert faces_run == len(faces)
    assert faces_run / batches > 1, f"{faces_run} faces in {batches} executions: the server never batched"


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_a_slow_server_times_out_instead_of_hanging(server, grpc):
    faces, _ = _faces(1, seed=1)
    with load(server.url("fer_slow", grpc=grpc), timeout_s=0.5) as slow:    # the config and health calls are quick
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"no answer within timeout_s=0.5 s while running a batch"):
            slow.predict(faces)
        assert time.monotonic() - start < 2.5


def test_missing_model_is_named_with_the_served_ones(server):
    with pytest.raises(ModelLoadError, match=r"no model 'fer_typo' \(it serves \[.*'fer'.*\]\)"):
        load(server.url("fer_typo"))
    with pytest.raises(ModelLoadError, match=r"model 'fer' version 7 is not ready \(version 1: READY"):
        load(server.url("fer", grpc=True), model_version=7)


def test_missing_or_contradicting_contract_is_refused(server):
    with pytest.raises(ContractError, match="has no parameter 'fer_edge_contract'.*fer-export --triton"):
        load(server.url("fer_no_contract"))
    with pytest.raises(ContractError, match=r"input is \[-1, 1, 48, 48\] but the contract says N x 1 x 32 x 32"):
        load(server.url("fer_wrong_dims", grpc=True))


def test_options_that_cannot_apply_are_refused(server):
    with pytest.raises(ModelLoadError, match="at most 16 faces per request"):
        load(server.url("fer"), max_batch=64)
    with pytest.raises(ModelLoadError, match="drop them"):
        load(server.url("fer"), backend="openvino")
    with pytest.raises(ModelLoadError, match=r"options \['cuda_graph'\] do not apply"):
        load(server.url("fer"), cuda_graph=True)


def test_server_killed_under_running_clients_is_a_clear_error(installed, repository, tmp_path):
    """Clients wait in fer_slow's queue (3 s) when the server dies: each gets an error within a second or two,
    well before its 20 s timeout, so the error comes from the dead connection, not the clock."""
    shutil.copytree(repository / "fer_slow", tmp_path / "repo" / "fer_slow")     # one model: a quicker start
    doomed = TritonServer(tmp_path / "repo", log_dir=tmp_path)
    faces, _ = _faces(4, seed=2)
    outcome, ended = {}, {}
    with doomed:
        models = [load(doomed.url("fer_slow", grpc=i % 2 == 1), timeout_s=20) for i in range(4)]

        def client(i: int) -> None:
            try:
                models[i].predict(faces[i:i + 1])
                outcome[i] = "answered"
            except Exception as exc:  # reported below
                outcome[i] = exc
            ended[i] = time.monotonic()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)                # all four are queued on the server now
        killed = time.monotonic()
        doomed.stop()
        for t in threads:
            t.join(timeout=15)
    assert not any(t.is_alive() for t in threads), "a client hung on a dead server"
    for i in range(4):
        assert isinstance(outcome[i], BackendUnavailableError), outcome[i]
        assert "cannot reach a Triton server" in str(outcome[i]) and "stopped mid-run" in str(outcome[i])
        assert ended[i] - killed < 5
    with pytest.raises(BackendUnavailableError, match="cannot reach"):   # and so does the next call
        models[0].predict(faces[:1])


def test_fer_bench_sweeps_cameras_against_the_server(server, probe_exported, tmp_path, capsys):
    """A short fer-bench --triton run: both sides measured per client count, the server's batch mean read back,
    perf_analyzer's equivalent printed; a model other than the served one is refused."""
    import json
    from fer_edge.cli.bench import main
    stem = tmp_path / "triton"
    argv = [str(probe_exported["fp32"].path), "--triton", server.url("fer"), "--concurrency", "1,4", "--rounds", "1",
            "--duration", "0.4", "--warmup", "2", "--no-progress", "--triton-report", str(stem)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"perf_analyzer -m fer -u 127.0.0.1:{server.http_port} -i http" in printed
    assert "target not evaluated" in printed          # the target compares 8 clients with 1
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert [r["clients"] for r in rows] == [1, 4]
    for r in rows:
        assert r["triton"]["requests"] > 0 and r["in_process"]["requests"] > 0
        assert r["server_faces"] >= r["triton"]["requests"]      # warm-up requests count on the server too
        assert r["server_mean_batch"] == pytest.approx(r["server_faces"] / r["server_executions"])
    assert rows[0]["server_mean_batch"] == 1.0                   # one camera: nothing to batch
    assert "| 4 |" in stem.with_suffix(".md").read_text()
    assert main([str(probe_exported["fp16"].path), "--triton", server.url("fer"), "--rounds", "1"]) == 2
    assert "precision: 'fp32' on the server vs 'fp16'" in capsys.readouterr().err
