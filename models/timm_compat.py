"""Import timm on a CPU-only torch, where torchvision's compiled ops are missing.

PyPI has no CPU torchvision wheel; the CUDA one imports on CPU torch only as far as
`torchvision/_meta_registrations.py`, which registers fake kernels for `torchvision::nms` and
`torchvision::qnms` and fails with "operator torchvision::nms does not exist". timm imports
torchvision, so `import timm` fails too. Defining the two op schemas before torchvision is imported
lets it import in pure-Python mode; timm never calls those ops. The same mismatch is common on
Jetson images with a hand-built torch, so we fix it with a warning instead of failing.
"""
from __future__ import annotations

import sys
import warnings

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_library = None  # keep the Library object alive: dropping it unregisters the schemas


def _torchvision_ops_missing(torch) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False
    except RuntimeError:
        return True


def import_timm():
    """Return the timm module, defining torchvision's missing op schemas first when needed."""
    global _library
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torch
    except ImportError as exc:
        raise ImportError("fer-edge export needs PyTorch and timm. Install them with: "
                          "pip install torch==2.13.0 torchvision==0.28.0 && pip install 'fer-edge[export]'") from exc
    if "torchvision" not in sys.modules and _library is None and _torchvision_ops_missing(torch):
        try:
            import importlib.util
            has_tv = importlib.util.find_spec("torchvision") is not None
        except ValueError:
            has_tv = False
        if has_tv:
            _library = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                _library.define(f"{op}{_SCHEMA}")
            try:
                import torchvision  # noqa: F401
            except Exception as exc:  # pragma: no cover - depends on the local install
                raise ImportError(f"torchvision fails to import even with the CPU workaround ({exc}); "
                                  "install a torchvision that matches torch (for torch 2.13: torchvision==0.28.0)") from exc
            warnings.warn("torchvision's compiled ops are unavailable for this torch build (CPU torch with a CUDA "
                          "torchvision, or a mismatched Jetson build); defined placeholder schemas so timm imports. "
                          "Model export is unaffected.", RuntimeWarning, stacklevel=2)
    import timm
    return timm
