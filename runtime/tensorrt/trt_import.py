"""Pick the TensorRT Python module that runs an engine (`tensorrt`, `tensorrt_lean` or `tensorrt_rtx`).

What a flavour can BUILD (Builder, strong typing, precision flags) is decided in fer_edge.export.engine_build.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Tuple

from fer_edge.runtime.errors import BackendUnavailableError

INSTALL_HINTS = {
    "tensorrt": "desktop/server: pip install 'fer-edge[trt-cu12]' (driver R525+) or 'fer-edge[trt-cu13]' "
                "(driver R580+); Jetson: sudo apt install python3-libnvinfer (ships with JetPack)",
    "tensorrt_lean": "pip install tensorrt-lean (runs version-compatible engines only)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu12 (TensorRT for RTX; x86_64 and Windows only)",
}
FLAVOURS = tuple(INSTALL_HINTS)     # also the order tried when the sidecar does not name the builder


def parse_version(text: str) -> Tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); non-numeric tails ('1.7.1.116+cuda') are cut at the first non-digit."""
    parts = []
    for piece in str(text).split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


@dataclass(frozen=True)
class TrtFlavour:
    """An imported TensorRT module, its flavour name ("tensorrt", "tensorrt_lean", "tensorrt_rtx") and version."""
    module: Any
    name: str
    version: str

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def import_flavour(name: str) -> TrtFlavour:
    """Import one named flavour or raise BackendUnavailableError with its install command."""
    if name not in FLAVOURS:
        raise BackendUnavailableError(f"unknown TensorRT flavour {name!r}; choose one of {FLAVOURS}")
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError, or OSError when the shared libraries are missing
        raise BackendUnavailableError(f"{name} cannot be imported ({type(exc).__name__}: {str(exc)[:160]}). "
                                      f"Install it: {INSTALL_HINTS[name]}") from None
    return TrtFlavour(module, name, str(getattr(module, "__version__", "0")))


def import_first(order: Iterable[str], purpose: str) -> TrtFlavour:
    """The first importable flavour in `order`; the error lists every attempt and how to install each."""
    failures = []
    for name in order:
        try:
            return import_flavour(name)
        except BackendUnavailableError as exc:
            failures.append(str(exc))
    raise BackendUnavailableError(f"no TensorRT module is available for {purpose}:\n  - " + "\n  - ".join(failures))


def make_logger(trt, warn=None):
    """A trt.ILogger that keeps errors (so a failed build or deserialisation can quote them) and passes
    warnings to `warn` when given; timing-cache chatter is dropped."""
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))
            elif warn is not None and severity == trt.ILogger.Severity.WARNING and "timing cache" not in str(msg).lower():
                warn(f"  TensorRT: {msg}")
    return Logger()
