"""Triton Inference Server client backend: `load("triton://host:8000/model")` (HTTP) or
`load("triton+grpc://host:8001/model")` returns the usual FerModel. Faces are preprocessed here, per the
contract the server's model config carries (parameter `fer_edge_contract`, written by `fer-export --triton`),
and each prepared batch is one inference request.

Threading: safe and parallel. tritonclient's HTTP client must stay on the thread that made it, so every thread
gets its own client (a connection each): concurrent predict() calls reach the server together, and its
dynamic batcher may run them as one batch.
Timeouts: every call (health, config, inference) gives up after timeout_s, so a dead or stuck server is an
error, never a hang.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import numpy as np

from fer_edge.runtime.contract import ModelContract, shape_problems
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError

INSTALL_FIX = "pip install 'fer-edge[triton]'"
DEFAULT_PORTS = {"triton": 8000, "triton+grpc": 8001}
CONTRACT_PARAMETER = "fer_edge_contract"
DEFAULT_TIMEOUT_S = 10.0
OPTIONS = ("timeout_s", "model_version", "max_batch")
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}


class ServerModel(str):
    """The source URL, where FerModel keeps an artifact's path: messages print it, repr shows the model name."""

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]

    stem = name


def parse_source(source: str) -> Tuple[str, str, str]:
    """'triton://host:port/model' -> (scheme, 'host:port', model); a missing port is Triton's default."""
    parts = urlsplit(source)
    model = parts.path.strip("/")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or not model or "/" in model or port == -1 \
            or parts.query or parts.fragment:
        raise ModelLoadError(f"{source}: not a Triton model address; write triton://HOST:PORT/MODEL (HTTP, port "
                             "8000 by default) or triton+grpc://HOST:PORT/MODEL (gRPC, 8001), MODEL being the "
                             "folder name in the model repository; pass a version as model_version=")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port or DEFAULT_PORTS[parts.scheme]}", model


def import_client(scheme: str):
    try:
        if scheme == "triton+grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as exc:
        raise BackendUnavailableError(f"triton:// models need the Triton client (tritonclient, not installed: "
                                      f"{exc}): {INSTALL_FIX}") from None
    return client


class TritonBackend:
    """One model on one server; see the module docstring for threading and timeouts."""

    def __init__(self, source: str, timeout_s: float = DEFAULT_TIMEOUT_S, model_version: Any = "",
                 max_batch: Optional[int] = None):
        self.source = ServerModel(source)
        self.scheme, self.address, self.model = parse_source(source)
        if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
            raise ModelLoadError(f"{source}: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.version = str(model_version)
        self.client_module = import_client(self.scheme)
        self.name = "triton-grpc" if self.scheme == "triton+grpc" else "triton-http"
        self._local = threading.local()
        self._clients: List[Any] = []
        self._lock = threading.Lock()
        self.closed = False
        try:
            self._check_model_ready()
            config = self._call("reading the model config", "get_model_config", self.model, self.version)
            self.config = config.get("config", config)        # gRPC's JSON wraps it
            self.max_batch = self._batch_limit(max_batch)
        except Exception:
            self.close()
            raise

    # -- calls ------------------------------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.scheme == "triton+grpc":
                client = self.client_module.InferenceServerClient(self.address)
            else:
                client = self.client_module.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            with self._lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def _call(self, doing: str, method: str, *args, **kwargs):
        """One client call with the timeout, every failure turned into an error that names the fix."""
        if self.scheme == "triton+grpc":
            kwargs["client_timeout"] = self.timeout_s
            if method.startswith("get_"):
                kwargs["as_json"] = True
        try:
            return getattr(self._client(), method)(*args, **kwargs)
        except Exception as exc:    # tritonclient, gevent, grpc and socket errors alike
            raise self._failure(exc, doing) from None

    def _failure(self, exc: Exception, doing: str) -> Exception:
        text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        lowered = text.lower()
        if any(word in lowered for word in ("timeout", "timed out", "deadline_exceeded", "deadline exceeded")):
            return BackendUnavailableError(
                f"{self.source}: the Triton server gave no answer within timeout_s={self.timeout_s:g} s while "
                f"{doing} ({text}). It is overloaded, stuck or unreachable through a firewall: check its log and "
                "load (nvidia-smi, its /metrics), or pass a larger timeout_s= to load().")
        if isinstance(exc, OSError) or any(word in lowered for word in ("unavailable", "connection", "refused",
                                                                           "reset by peer", "broken pipe")):
            return BackendUnavailableError(
                f"{self.source}: cannot reach a Triton server at {self.address} while {doing} ({text}). Start "
                "tritonserver (--model-repository DIR), or fix the address: its HTTP port (8000 by default) for "
                "triton://, its gRPC port (8001) for triton+grpc://. A server that stopped mid-run says the same.")
        return ModelLoadError(f"{self.source}: the Triton server refused {doing} ({text}); see the server's log.")

    # -- checks at load ---------------------------------------------------------------------------------------
    def _check_model_ready(self) -> None:
        self._call("checking that the server is live", "is_server_live")
        if self._call("checking that the model is ready", "is_model_ready", self.model, self.version):
            return
        index = self._call("listing the server's models", "get_model_repository_index")
        entries = index.get("models", []) if isinstance(index, dict) else index
        found = [m for m in entries if m.get("name") == self.model]
        version = f" version {self.version}" if self.version else ""
        if not found:
            names = sorted({m.get("name") for m in entries})
            raise ModelLoadError(f"{self.source}: the server has no model {self.model!r} (it serves {names}). Fix the "
                                 "name in the URL (the model's folder in the repository), or add it with "
                                 "fer-export --triton DIR and restart tritonserver (or load it: --model-control-mode).")
        state = "; ".join(f"version {m.get('version', '?')}: {m.get('state', '?')} {m.get('reason', '')}".strip()
                          for m in found)
        server_ready = self._call("checking that the server is ready", "is_server_ready")
        waiting = "" if server_ready else " The server is not ready yet (still loading, or a model failed)."
        raise ModelLoadError(f"{self.source}: model {self.model!r}{version} is not ready ({state}).{waiting} Wait "
                             f"until GET /v2/models/{self.model}/ready answers 200, or read the server's log for "
                             "why it failed to load and fix the repository (fer-export --triton writes one).")

    def read_contract(self) -> ModelContract:
        """The contract from the config's `fer_edge_contract` parameter, checked against the config's I/O."""
        parameter = (self.config.get("parameters") or {}).get(CONTRACT_PARAMETER) or {}
        text = parameter.get("string_value")
        if not text:
            raise ContractError(f"{self.source}: the model's config on the server has no parameter "
                                f"{CONTRACT_PARAMETER!r}, so fer-edge cannot know its preprocessing and labels. Write "
                                "its repository with fer-export --triton DIR --from MODEL.onnx, which adds it.")
        contract = ModelContract.from_json(text, source=f"{self.source} (config parameter {CONTRACT_PARAMETER})")
        self._check_io(contract)
        return contract

    def _io_shape(self, tensor: Dict[str, Any]) -> List[int]:
        dims = [int(d) for d in tensor.get("dims", [])]
        return [-1] + dims if int(self.config.get("max_batch_size", 0)) > 0 else dims

    def _check_io(self, contract: ModelContract) -> None:
        inputs, outputs = self.config.get("input", []), self.config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise ContractError(f"{self.source}: the server's model config has {len(inputs)} inputs and {len(outputs)} "
                                "outputs; fer-edge models have one of each. Regenerate it with fer-export --triton.")
        self.input, self.output = inputs[0], outputs[0]
        problems = shape_problems(contract, self._io_shape(self.input), self._io_shape(self.output),
                                  "server's model config")
        want = TRITON_DTYPES.get(contract.dtype)
        if self.input.get("data_type") != want:
            problems.append(f"its input is {self.input.get('data_type')} but the contract's preprocessing makes "
                            f"{contract.dtype} ({want})")
        if self.output.get("data_type") not in ("TYPE_FP32", "TYPE_FP16"):
            problems.append(f"its output is {self.output.get('data_type')}, not TYPE_FP32 or TYPE_FP16")
        if problems:
            raise ContractError(f"{self.source}: the contract does not fit the server's model config: "
                                f"{'; '.join(problems)}. The config or the contract parameter was edited, or they "
                                "come from different exports: regenerate the model's folder with fer-export --triton.")
        self.datatype = self.input["data_type"].replace("TYPE_", "")
        self.input_dtype = np.dtype(contract.dtype)

    def _batch_limit(self, requested: Optional[int]) -> Optional[int]:
        server = int(self.config.get("max_batch_size", 0))
        first = int((self.config.get("input") or [{}])[0].get("dims", [-1])[0]) if not server else -1
        limit = server or (first if first > 0 else None)
        if requested is None:
            return limit
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ModelLoadError(f"{self.source}: max_batch must be a positive integer, got {requested!r}")
        if limit and requested > limit:
            raise ModelLoadError(f"{self.source}: max_batch={requested} but the server takes at most {limit} faces "
                                 "per request (max_batch_size in its config.pbtxt); pass a smaller max_batch, or "
                                 "raise max_batch_size there and restart the server.")
        return requested

    # -- inference --------------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.closed:
            raise ModelLoadError(f"{self.source}: this model was closed; load it again to keep predicting")
        tensor = self.client_module.InferInput(self.input["name"], list(batch.shape), self.datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=self.input_dtype))
        wanted = [self.client_module.InferRequestedOutput(self.output["name"])]
        result = self._call(f"running a batch of {len(batch)}", "infer", self.model, [tensor],
                            model_version=self.version, outputs=wanted)
        outputs = result.as_numpy(self.output["name"])
        if outputs is None or len(outputs) != len(batch):
            raise ModelLoadError(f"{self.source}: the server answered {None if outputs is None else outputs.shape} "
                                 f"for a batch of {len(batch)} faces; its model is broken: see the server's log.")
        return outputs

    def statistics(self) -> Dict[str, int]:
        """The server's counters for this model since it loaded: inference_count (faces), execution_count
        (batches its backend ran); their ratio is the mean batch the dynamic batcher formed."""
        stats = self._call("reading the model's statistics", "get_inference_statistics", self.model, self.version)
        rows = stats.get("model_stats", [])
        return {key: sum(int(row.get(key, 0)) for row in rows) for key in ("inference_count", "execution_count")}

    def close(self) -> None:
        with self._lock:
            self.closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:   # an HTTP client made on another (finished) thread: its sockets close with it
                pass


def load_triton(source: str, **options) -> Tuple[ServerModel, ModelContract, TritonBackend, Dict[str, Any]]:
    """What `load("triton://...")` builds its FerModel from: the source, the contract read from the server, the
    backend, and a sidecar-like record of the server's config.

    options: timeout_s (default 10 s, every call), model_version (default: the server's latest),
    max_batch (faces per request; default and upper bound: the config's max_batch_size)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelLoadError(f"{source}: options {unknown} do not apply to a Triton model; it takes {list(OPTIONS)}")
    backend = TritonBackend(source, **options)
    try:
        contract = backend.read_contract()
    except Exception:
        backend.close()
        raise
    return backend.source, contract, backend, {"triton": {"url": str(source), "config": backend.config}}
