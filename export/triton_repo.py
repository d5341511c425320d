"""A Triton Inference Server model repository from fer-edge artifacts: the Python API of `fer-export --triton`.

One folder per model (written at once, never half):

    <repo>/<model>/config.pbtxt      platform, batch limits, dims and dtypes, dynamic batching, instances,
                                     and the contract as the `fer_edge_contract` parameter (clients read it there)
    <repo>/<model>/labels.txt        one label per line in contract order (`label_filename` of the output)
    <repo>/<model>/fer_edge.json     the artifact's sidecar (contract, sha256, parity, engine build)
    <repo>/<model>/1/model.onnx      platform onnxruntime_onnx, or backend python with 1/model.py
    <repo>/<model>/1/model.plan      platform tensorrt_plan (a fer-export engine built with full TensorRT)

Everything is checked before anything is written: the file against its sidecar, the graph's or engine's names,
dtypes and dims against the contract, and for plans the optimisation profile (its min must be 1) and the
TensorRT version the server runs.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from fer_edge.export.atomic_dir import write_folder_atomically
from fer_edge.export.engine_build import DEFAULT_BATCH, source_contract
from fer_edge.export.triton_config import INSTANCE_KINDS, TRITON_DTYPES, ModelConfigSpec, TensorConfig, render_config
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, verify_artifact
from fer_edge.runtime.contract import ModelContract, shape_problems
from fer_edge.runtime.errors import FerEdgeError, ModelLoadError
from fer_edge.runtime.model import ONNX_INTEGRITY_FIX
from fer_edge.runtime.tensorrt.engine_compat import RuntimeTarget, check_compatibility, rebuild_command, verify_engine_file
from fer_edge.runtime.tensorrt.trt_import import parse_version
from fer_edge.runtime.triton_backend import CONTRACT_PARAMETER     # what the triton:// client reads

PLATFORMS = ("auto", "onnxruntime", "tensorrt", "python")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SIDECAR_NAME = "fer_edge.json"
LABELS_NAME = "labels.txt"
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
DEFAULT_MAX_BATCH = DEFAULT_BATCH[2]        # ONNX: the same 32 as fer-export's default engine profile
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ONNX_ELEM_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64"}


class TritonRepoError(FerEdgeError, ValueError):
    """An artifact or option that cannot become a working Triton model; nothing was written."""


@dataclass
class TritonModel:
    """Everything one model folder will hold, checked; write_model_folder puts it on disk."""
    name: str
    artifact: Path
    model_file: str                         # inside the version folder: model.onnx | model.plan
    config: str
    contract: ModelContract
    sidecar: Dict[str, Any]
    extra_files: Dict[str, Path] = field(default_factory=dict)      # version-folder name -> source
    notes: List[str] = field(default_factory=list)


def default_model_name(contract: ModelContract, plan: bool = False) -> str:
    """fer_emotion_<precision>[_u8][_probs][_plan], e.g. fer_emotion_fp16 or fer_emotion_fp16_u8_probs_plan."""
    return "_".join(["fer_emotion", contract.precision] + (["u8"] if contract.dtype == "uint8" else [])
                    + (["probs"] if contract.output_kind == "probabilities" else []) + (["plan"] if plan else []))


def check_triton_options(platform: str, max_batch_size: Optional[int], preferred: List[int], queue_delay_us: int,
                   instances: int, kind: str) -> str:
    if platform not in PLATFORMS:
        raise TritonRepoError(f"platform {platform!r}: choose one of {PLATFORMS}")
    if max_batch_size is not None and max_batch_size < 1:
        raise TritonRepoError(f"max_batch_size {max_batch_size} (--triton-max-batch): must be 1 or more")
    if any(b < 1 for b in preferred) or (max_batch_size and any(b > max_batch_size for b in preferred)):
        raise TritonRepoError(f"preferred batch sizes {preferred} (--triton-preferred-batch) must lie between 1 and "
                              f"max_batch_size ({max_batch_size})")
    if queue_delay_us < 0:
        raise TritonRepoError(f"queue delay {queue_delay_us} us (--triton-queue-delay-us) cannot be negative")
    if instances < 1:
        raise TritonRepoError(f"instances {instances} (--triton-instances): must be 1 or more")
    triton_kind = INSTANCE_KINDS.get(kind.lower()) or (kind if kind in INSTANCE_KINDS.values() else None)
    if triton_kind is None:
        raise TritonRepoError(f"kind {kind!r} (--triton-kind): choose one of {sorted(INSTANCE_KINDS)}")
    return triton_kind


# ------------------------------------------------------------------ ONNX
def _onnx_io(path: Path, contract: ModelContract) -> Tuple[TensorConfig, TensorConfig]:
    """The graph's input and output, checked against the contract: names, element types and shapes."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise TritonRepoError(f"{path}: fer-edge models have one input and one output; this graph has "
                              f"{[i.name for i in inputs]} and {[o.name for o in graph.output]}. Re-export it.")
    found = []
    for value, want_name in ((inputs[0], contract.input_name), (graph.output[0], contract.output_name)):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        found.append((value.name, ONNX_ELEM_TYPES.get(tensor.elem_type), dims))
        if value.name != want_name:
            raise TritonRepoError(f"{path}: the graph names a tensor {value.name!r} where the contract says "
                                  f"{want_name!r}; the contract belongs to another model. Re-export it with fer-export.")
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = found
    problems = shape_problems(contract, in_dims, out_dims, "graph")
    if in_type != TRITON_DTYPES[contract.dtype]:
        problems.append(f"the graph input is {in_type} but the contract's preprocessing produces {contract.dtype}")
    if out_type is None:
        problems.append("the graph output has an element type Triton configs do not name")
    if problems:
        raise TritonRepoError(f"{path}: {'; '.join(problems)}. Re-export it with fer-export.")
    return (TensorConfig(in_name, in_type, contract.input_dims()),
            TensorConfig(out_name, out_type, [contract.num_classes], LABELS_NAME))


def _onnx_model(path: Path, platform: str, max_batch_size: Optional[int], trt_accelerator: bool,
                threads: Optional[int]):
    if platform == "tensorrt":
        raise TritonRepoError(f"{path}: platform tensorrt serves TensorRT plans; build one first "
                              f"(`fer-export --engine --trt tensorrt --onnx {path}` with the server's TensorRT), "
                              "or serve this ONNX with platform onnxruntime (or python)")
    if platform == "python" and trt_accelerator:
        raise TritonRepoError("the TensorRT accelerator is an ONNX Runtime backend option; the python platform "
                              "runs ONNX Runtime on the CPU. Drop one of the two.")
    sidecar = read_sidecar(path)
    verify_artifact(path, sidecar, ONNX_INTEGRITY_FIX)
    contract = source_contract(path)
    tensors = _onnx_io(path, contract)
    spec = {"platform": None if platform == "python" else "onnxruntime_onnx",
            "backend": "python" if platform == "python" else None,
            "max_batch_size": max_batch_size or DEFAULT_MAX_BATCH}
    if trt_accelerator:
        mode = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}[contract.precision]
        spec["gpu_accelerator"] = {"precision_mode": mode, "max_workspace_size_bytes": str(1 << 30)}
    if threads:
        spec["parameters"] = {"intra_op_thread_count": str(threads)}
    sidecar = sidecar or {"contract": contract.to_dict(),
                          "artifact": {"kind": "onnx", "file": path.name, "sha256": sha256_file(path),
                                       "bytes": path.stat().st_size}}
    return contract, sidecar, tensors, spec


# ------------------------------------------------------------------ TensorRT plans
def check_plan_for_server(path: Path, sidecar: Dict[str, Any], server_trt: Optional[str]) -> List[str]:
    """Refuse a plan Triton's TensorRT backend cannot load: another flavour, or another TensorRT version than the
    server's (server_trt, e.g. "10.16"). Returns notes to print."""
    engine = sidecar.get("engine") or {}
    flavour, built = engine.get("flavour"), str(engine.get("version", "?"))
    serve_onnx = ("or serve the ONNX instead (fer-export --triton DIR --from MODEL.onnx, with "
                  "--triton-trt-accelerator on GPU servers), which any Triton runs")
    rebuild = _server_rebuild_command(path, sidecar)
    if flavour != "tensorrt":
        raise TritonRepoError(f"{path}: built with {flavour} {built}; Triton's tensorrt_plan backend runs plans of "
                              "full TensorRT only. Build the engine with the server's TensorRT, e.g. inside the "
                              f"Triton container: {rebuild}; {serve_onnx}.")
    gpu = engine.get("target") or {}
    notes = [f"{path.name}: built for {gpu['gpu_name']} (compute capability {gpu.get('compute_capability', '?')}, "
             f"hardware compatibility {engine.get('hardware_compat', 'none')}); the server's GPU must fit that too"
             ] if gpu.get("gpu_name") else []
    if server_trt is None:
        return notes + [f"{path.name}: built with TensorRT {built}; the server must run exactly that TensorRT (a plan "
                        "only loads in the version that built it). Pass --triton-trt VERSION to have this checked."]
    wanted = parse_version(server_trt)
    if not wanted:
        raise TritonRepoError(f"--triton-trt {server_trt!r}: not a TensorRT version; pass e.g. 10.16 or 10.16.0.72")
    # "10.16" names the release line: compare the parts given; the patch must still match, which a note says.
    if len(wanted) < 2:
        raise TritonRepoError(f"--triton-trt {server_trt!r}: give at least major.minor (e.g. 10.16): a plan loads only "
                              "in the TensorRT release that built it")
    partial = len(wanted) < 3 and parse_version(built)[:len(wanted)] == wanted
    target = RuntimeTarget("tensorrt", built if partial else server_trt, machine="")
    try:
        check_compatibility(path, {"engine": {**engine, "target": {}}}, target)
    except ModelLoadError:
        raise TritonRepoError(
            f"{path}: this plan was built with TensorRT {built} and the server runs TensorRT {server_trt}. A TensorRT "
            "plan only runs on the TensorRT version that built it (version-compatible plans: the same major with an "
            "older or equal builder). Fix: rebuild it with TensorRT "
            f"{server_trt} on a GPU of the server's kind, e.g. inside the server's container: {rebuild}; "
            f"{serve_onnx}.") from None
    return notes + ([f"{path.name}: TensorRT {built} matches the server's {server_trt} in the parts given; the "
                     "patch release must match too"] if partial else [])


def _server_rebuild_command(path: Path, sidecar: Dict[str, Any]) -> str:
    """The engine's recorded rebuild command with full TensorRT (Triton's backend) as the builder."""
    args = shlex.split(rebuild_command(path, sidecar))
    if "--trt" in args:
        del args[args.index("--trt"):args.index("--trt") + 2]
    return shlex.join(args + ["--trt", "tensorrt"])


def _plan_io(path: Path, contract: ModelContract, engine: Dict[str, Any], max_batch_size: Optional[int]):
    """Input/output tensors and the batch limit from the engine sidecar's profile and I/O records."""
    profile = (engine.get("profile") or {}).get(contract.input_name)
    if not profile or not all(k in profile for k in ("min", "max")):
        raise TritonRepoError(f"{path}: its sidecar records no optimisation profile for input "
                              f"{contract.input_name!r}; rebuild it with `{rebuild_command(path, {'engine': engine})}`")
    lo, hi = list(profile["min"]), list(profile["max"])
    if lo[0] != 1:
        raise TritonRepoError(f"{path}: its optimisation profile starts at batch {lo[0]}, but Triton runs batches from "
                              "1 up (one face is one request); rebuild it with a profile from 1, e.g. "
                              "fer-export --engine --batch 1:8:32 --onnx MODEL.onnx")
    if lo[1:] != contract.input_dims() or hi[1:] != contract.input_dims():
        raise TritonRepoError(f"{path}: its profile shapes {lo}..{hi} do not fit the contract "
                              f"N x {contract.input_dims()}; the sidecar belongs to another engine. Rebuild it.")
    if max_batch_size is not None and max_batch_size > hi[0]:
        raise TritonRepoError(f"max_batch_size {max_batch_size} (--triton-max-batch) exceeds the engine profile's max "
                              f"batch {hi[0]}; pass at most {hi[0]} or rebuild the engine with a larger --batch")
    io = {t.get("name"): t for t in engine.get("io") or []}
    tensors = []
    for name, dims, label in ((contract.input_name, contract.input_dims(), None),
                              (contract.output_name, [contract.num_classes], LABELS_NAME)):
        dtype = TRITON_DTYPES.get(str((io.get(name) or {}).get("dtype")))
        if dtype is None:
            raise TritonRepoError(f"{path}: its sidecar records no supported dtype for tensor {name!r} "
                                  f"(engine I/O: {sorted(io)}); rebuild it with fer-export --engine")
        tensors.append(TensorConfig(name, dtype, dims, label))
    if tensors[0].data_type != TRITON_DTYPES[contract.dtype]:
        raise TritonRepoError(f"{path}: the engine input is {tensors[0].data_type} but the contract's preprocessing "
                              f"produces {contract.dtype}; rebuild the engine from the matching ONNX")
    return tuple(tensors), max_batch_size or hi[0]


def _plan_model(path: Path, platform: str, max_batch_size: Optional[int], server_trt: Optional[str]):
    if platform not in ("auto", "tensorrt"):
        raise TritonRepoError(f"{path}: a TensorRT engine is served by platform tensorrt, not {platform}; pass the "
                              "ONNX it was built from to serve it with ONNX Runtime")
    sidecar = read_sidecar(path)
    verify_engine_file(path, sidecar)
    contract = ModelContract.from_dict(sidecar["contract"], source=str(path) + ".json")
    notes = check_plan_for_server(path, sidecar, server_trt)
    tensors, max_batch = _plan_io(path, contract, sidecar["engine"], max_batch_size)
    return contract, sidecar, tensors, {"platform": "tensorrt_plan", "max_batch_size": max_batch,
                                        "cuda_graphs": True}, notes


# ------------------------------------------------------------------ the repository
def plan_model(artifact: Path, model_name: Optional[str] = None, *, platform: str = "auto",
               max_batch_size: Optional[int] = None, preferred_batch_sizes=None, queue_delay_us: int = 2000,
               instances: int = 1, kind: str = "auto", server_trt: Optional[str] = None,
               trt_accelerator: bool = False, threads: Optional[int] = None) -> TritonModel:
    """Check an artifact and every option and render its config; writes nothing (write_model_repository does)."""
    artifact = Path(artifact)
    preferred = sorted(set(int(b) for b in preferred_batch_sizes or []))
    triton_kind = check_triton_options(platform, max_batch_size, preferred, queue_delay_us, instances, kind)
    if not artifact.is_file():
        raise TritonRepoError(f"{artifact}: no such file; pass an .onnx or a TensorRT engine written by fer-export")
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        contract, sidecar, tensors, spec = _onnx_model(artifact, platform, max_batch_size, trt_accelerator, threads)
        notes, model_file = [], "model.onnx"
    elif suffix in ENGINE_SUFFIXES:
        if trt_accelerator:
            raise TritonRepoError(f"{artifact}: the TensorRT accelerator is for ONNX models; a plan already is TensorRT")
        contract, sidecar, tensors, spec, notes = _plan_model(artifact, platform, max_batch_size, server_trt)
        model_file = "model.plan"
        if triton_kind == "KIND_CPU":
            raise TritonRepoError("kind cpu (--triton-kind): TensorRT plans run on GPUs only; use auto or gpu")
        triton_kind = "KIND_GPU"
    else:
        raise TritonRepoError(f"{artifact}: unknown artifact type {suffix!r}; pass an .onnx or {ENGINE_SUFFIXES} file")
    if spec["max_batch_size"] and any(b > spec["max_batch_size"] for b in preferred):
        raise TritonRepoError(f"preferred batch sizes {preferred} exceed max_batch_size {spec['max_batch_size']}")
    name = model_name or default_model_name(contract, plan=model_file == "model.plan")
    if not MODEL_NAME.match(name):
        raise TritonRepoError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it is a folder name and "
                              "part of the server's URLs)")
    labels_problem = [label for label in contract.labels if "\n" in label]
    if labels_problem:
        raise TritonRepoError(f"labels {labels_problem} contain line breaks; labels.txt holds one label per line")
    spec.setdefault("parameters", {})[CONTRACT_PARAMETER] = contract.to_json()
    extra = {"model.py": PYTHON_MODEL} if spec.get("backend") == "python" else {}
    if extra and not PYTHON_MODEL.is_file():
        raise TritonRepoError(f"{PYTHON_MODEL} is missing from this fer-edge install; reinstall fer-edge")
    comments = [f"fer-edge model repository entry, written by fer-export from {artifact.name}",
                f"sha256 {sidecar['artifact'].get('sha256', '?')}; contract: parameters[{CONTRACT_PARAMETER}]"]
    config = render_config(ModelConfigSpec(name=name, input=tensors[0], output=tensors[1], preferred_batch_sizes=preferred,
                                           queue_delay_us=queue_delay_us, instances=instances, kind=triton_kind,
                                           comments=comments, **spec))
    return TritonModel(name, artifact, model_file, config, contract, sidecar, extra, notes)


def write_model_folder(model: TritonModel, repo_dir: Path) -> Path:
    def fill(folder: Path) -> None:
        version = folder / "1"
        version.mkdir()
        (folder / "config.pbtxt").write_text(model.config, encoding="utf-8")
        (folder / LABELS_NAME).write_text("".join(label + "\n" for label in model.contract.labels), encoding="utf-8")
        (folder / SIDECAR_NAME).write_text(json.dumps(model.sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.copyfile(model.artifact, version / model.model_file)
        for name, source in model.extra_files.items():
            shutil.copyfile(source, version / name)
    try:
        return write_folder_atomically(Path(repo_dir) / model.name, fill)
    except OSError as exc:
        raise TritonRepoError(f"cannot write {Path(repo_dir) / model.name} ({exc.strerror or exc}); free some space "
                              "or pass another --triton folder") from None


def write_model_repository(artifact: Path, repo_dir: Path, model_name: Optional[str] = None, *,
                           platform: str = "auto", max_batch_size: Optional[int] = None, preferred_batch_sizes=None,
                           queue_delay_us: int = 2000, instances: int = 1, kind: str = "auto",
                           server_trt: Optional[str] = None, trt_accelerator: bool = False,
                           threads: Optional[int] = None, log: Callable[[str], None] = print) -> Path:
    """Write `<repo_dir>/<model>/` for one artifact (.onnx or TensorRT engine) and return that folder.

    platform: auto (.onnx -> onnxruntime, engine -> tensorrt), onnxruntime, tensorrt or python (1/model.py runs
    the ONNX with ONNX Runtime inside Triton's Python backend). kind: auto (Triton picks GPU when it has one),
    cpu or gpu. server_trt: the server's TensorRT version; a plan built with another is refused.
    trt_accelerator: ONNX Runtime's TensorRT execution provider on GPU instances. threads: ONNX Runtime
    intra-op threads per instance.
    """
    model = plan_model(artifact, model_name, platform=platform, max_batch_size=max_batch_size,
                       preferred_batch_sizes=preferred_batch_sizes, queue_delay_us=queue_delay_us,
                       instances=instances, kind=kind, server_trt=server_trt, trt_accelerator=trt_accelerator,
                       threads=threads)
    for note in model.notes:
        log(f"note: {note}")
    return write_model_folder(model, repo_dir)
