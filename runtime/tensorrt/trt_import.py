"""Pick the TensorRT Python module (`tensorrt`, `tensorrt_lean` or `tensorrt_rtx`) and describe its version.

One place decides which flavour is used, so build and runtime code can branch on capabilities
(`strongly_typed`, `has_precision_flags`, `can_build`) instead of sprinkling version checks.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterable, Tuple

from fer_edge.runtime.errors import BackendUnavailableError

FLAVOURS = ("tensorrt", "tensorrt_lean", "tensorrt_rtx")
BUILD_ORDER = ("tensorrt", "tensorrt_rtx")              # tensorrt_lean has no Builder
RUNTIME_ORDER = ("tensorrt", "tensorrt_lean", "tensorrt_rtx")

INSTALL_HINTS = {
    "tensorrt": "desktop/server: pip install 'fer-edge[trt]' (tensorrt + cuda-python); "
                "Jetson: sudo apt install python3-libnvinfer (ships with JetPack)",
    "tensorrt_lean": "pip install tensorrt-lean (runs version-compatible engines only)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu12 (TensorRT for RTX; x86_64 and Windows only)",
}


def parse_version(text: str) -> Tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); non-numeric tails ('1.7.1.116+cuda') are cut at the first non-digit."""
    parts = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class TrtFlavour:
    """An imported TensorRT module plus what it can do."""
    module: Any
    name: str          # "tensorrt", "tensorrt_lean" or "tensorrt_rtx"
    version: str

    @property
    def version_tuple(self) -> Tuple[int, ...]:
        return parse_version(self.version)

    @property
    def major(self) -> int:
        return self.version_tuple[0] if self.version_tuple else 0

    @property
    def can_build(self) -> bool:
        return hasattr(self.module, "Builder") and hasattr(self.module, "OnnxParser")

    @property
    def strongly_typed(self) -> bool:
        """STRONGLY_TYPED exists from TensorRT 9.1 and in every TensorRT-RTX."""
        if self.name == "tensorrt_rtx":
            return True
        return self.version_tuple[:2] >= (9, 1)

    @property
    def has_precision_flags(self) -> bool:
        """BuilderFlag.FP16/INT8 (weak typing) exist up to TensorRT 10.x; removed in 11 and absent in RTX."""
        flags = getattr(self.module, "BuilderFlag", None)
        return flags is not None and hasattr(flags, "FP16") and hasattr(flags, "INT8")

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


def import_builder(flavour: str = "auto") -> TrtFlavour:
    """A flavour that can build engines: `tensorrt`, else `tensorrt_rtx` (which builds without a GPU)."""
    chosen = import_first(BUILD_ORDER, "building engines") if flavour in (None, "auto") else import_flavour(flavour)
    if not chosen.can_build:
        raise BackendUnavailableError(f"{chosen.describe()} has no Builder/OnnxParser (a runtime-only package); "
                                      f"install {INSTALL_HINTS['tensorrt']}")
    return chosen


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
