"""A real Triton Inference Server for tests and benchmarks, from the `nvidia-pytriton` wheel.

That wheel bundles `tritonserver` 2.51 with the Python backend only (no ONNX Runtime or TensorRT backend), so
fer-edge serves its ONNX models here through `export/triton_python_model.py`. It is not pip-installed into the
project: `pip download`ed once and unzipped into the cache (`$FER_EDGE_TEST_CACHE`, else ~/.cache/fer-edge-tests),
because it pins numpy<2 and the Python backend stub (built with an old pybind11) returns empty outputs under
numpy 2. The stub embeds libpython and finds its packages through the first `python3` on PATH, so the server
gets its own virtualenv (numpy<2 plus the client's onnxruntime version) built next to it.

    with TritonServer(repo_dir) as server:      # 127.0.0.1, ephemeral ports, READY or an error with the log
        url = server.url("fer_emotion")          # triton://127.0.0.1:PORT/fer_emotion

Run by hand (for fer-bench --triton):  python tests/triton_server.py REPO_DIR   (Ctrl-C stops it).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.metadata
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

PYTRITON = "nvidia-pytriton==0.7.0"     # tritonserver 2.51
INSTALL_TIMEOUT_S = 600
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10
_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


class ServerUnavailable(Exception):
    """The server cannot be installed on this machine (the reason is the message); tests skip on it."""


def cache_root() -> Path:
    return Path(os.environ.get("FER_EDGE_TEST_CACHE") or Path.home() / ".cache" / "fer-edge-tests") / "tritonserver"


def _run(cmd: List[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ServerUnavailable(f"{what}: no result after {INSTALL_TIMEOUT_S} s ({' '.join(cmd)})") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in output if line.startswith("ERROR")] or output[-3:]
        raise ServerUnavailable(f"{what} failed: {' '.join(errors)[-600:]} ({' '.join(cmd)})")


def _check_platform() -> str:
    """The stub folder for this Python; refuse what the manylinux_2_35_x86_64 wheel cannot run."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise ServerUnavailable(f"{PYTRITON} ships tritonserver for Linux x86_64 only, not {sys.platform}/"
                                f"{platform.machine()}")
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        raise ServerUnavailable(f"{PYTRITON} needs glibc >= 2.35, this machine has {version}")
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "/") / (sysconfig.get_config_var("INSTSONAME") or "-")
    if not libpython.exists():
        raise ServerUnavailable(f"the Python backend stub embeds libpython, and this Python has no shared "
                                f"{libpython} (build it with --enable-shared)")
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@contextlib.contextmanager
def _locked(folder: Path):
    """One installer at a time (parallel pytest workers share the cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install() -> Dict[str, Path]:
    """The unzipped wheel (with this Python's stub in place) and the server's virtualenv, built on first use."""
    py = _check_platform()
    root = cache_root()
    ort_version = importlib.metadata.version("onnxruntime")
    dist = root / f"{PYTRITON.replace('==', '-')}-py{py}"
    venv = root / f"venv-py{py}-onnxruntime{ort_version}"
    with _locked(root):
        if not (dist / ".complete").exists():
            shutil.rmtree(dist, ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                _run([sys.executable, "-m", "pip", "download", "-q", "--retries", "2", "--no-deps", "-d", tmp,
                      PYTRITON], f"downloading {PYTRITON}")
                wheel = next(Path(tmp).glob("*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(dist)
            server = dist / "pytriton" / "tritonserver"
            stub = server / "python_backend_stubs" / py / "triton_python_backend_stub"
            if not stub.exists():
                raise ServerUnavailable(f"{PYTRITON} has no Python backend stub for Python {py}")
            shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
            for binary in (server / "bin" / "tritonserver",
                           server / "backends" / "python" / "triton_python_backend_stub"):
                binary.chmod(0o755)     # zipfile drops the executable bits
            (dist / ".complete").touch()
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(venv)], "creating the server's virtualenv")
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "numpy<2", f"onnxruntime=={ort_version}"],
                 "installing numpy<2 and onnxruntime into the server's virtualenv")
            (venv / ".complete").touch()
    server = dist / "pytriton" / "tritonserver"
    return {"bin": server / "bin" / "tritonserver", "backends": server / "backends", "caches": server / "caches",
            "libs": dist / "nvidia_pytriton.libs", "venv": venv}


def _die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs the server when the process that started it dies, so a
    test run killed by a timeout (no finalizers) leaves no server behind. Its stubs exit when it does."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_ports(count: int) -> List[int]:
    """Ports the OS calls free now (all held open together so they differ); a race is retried by start()."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """tritonserver on 127.0.0.1 in its own process group; stop() (or the with block) always ends it."""

    def __init__(self, repository: Path, log_dir: Optional[Path] = None, extra_args: Optional[List[str]] = None):
        self.repository = Path(repository)
        self.paths = install()
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="tritonserver-log-"))
        self.extra_args = extra_args or []
        self.process: Optional[subprocess.Popen] = None
        self.http_port = self.grpc_port = 0
        self.shm_prefix = f"fer_edge_test_{uuid.uuid4().hex[:12]}_"

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def url(self, model: str, grpc: bool = False) -> str:
        if grpc:
            return f"triton+grpc://127.0.0.1:{self.grpc_port}/{model}"
        return f"triton://127.0.0.1:{self.http_port}/{model}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "tritonserver.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def _environment(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.paths['venv'] / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"   # the stub's python3
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [sysconfig.get_config_var("LIBDIR"), str(self.paths["libs"]),
                                                        env.get("LD_LIBRARY_PATH")]))
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def start(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.http_port, self.grpc_port = free_ports(2)
            cmd = [str(self.paths["bin"]), f"--model-repository={self.repository}",
                   f"--backend-directory={self.paths['backends']}", f"--cache-directory={self.paths['caches']}",
                   "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                   "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
                   f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                   *self.extra_args]
            with open(self.log_path, "w") as log:
                # Own session: stop() kills the server and its Python-backend stubs as one process group.
                self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._environment(),
                                                start_new_session=True, preexec_fn=_die_with_parent)
            try:
                self.wait_ready()
                return
            except RuntimeError:
                self.stop()
                if "already in use" not in self.log_tail() or attempt == attempts - 1:
                    raise

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} before READY; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"tritonserver not READY after {timeout_s} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGKILL the group: Triton's graceful exit waits for idle connections and models (seconds) and gains a
        test nothing; a test calls this mid-run to kill the server under a client."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self._reap(STOP_TIMEOUT_S)
        self.process = None
        for leftover in Path("/dev/shm").glob(self.shm_prefix + "*"):   # a killed stub leaves its region
            leftover.unlink(missing_ok=True)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def _reap(self, timeout_s: float) -> bool:
        """Wait for the server, then for its stubs: gone or zombies (PID 1 reaps those whenever it likes)."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not living_members(self.process.pid):
                return True
            time.sleep(0.05)
        return False


def living_members(group: int) -> List[int]:
    """Processes of a process group that are not zombies, from /proc (stat: pid (comm) state ppid pgrp ...)."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                living.append(int(stat.parent.name))
    return living

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))     # `kill PID` stops the server too
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/triton_server.py MODEL_REPOSITORY")
    with TritonServer(Path(sys.argv[1])) as running:
        models = sorted(p.name for p in Path(sys.argv[1]).iterdir() if (p / "config.pbtxt").exists())
        print(f"tritonserver READY (log {running.log_path}); Ctrl-C stops it")
        for name in models:
            print(f"  {running.url(name)}    {running.url(name, grpc=True)}")
        with contextlib.suppress(KeyboardInterrupt):
            while running.process.poll() is None:
                time.sleep(1)
