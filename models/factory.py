"""The one timm model factory: a checkpoint becomes an eval-mode torch model and the contract its artifacts carry.

Export, calibration (BatchNorm synthesis), training (create_model with its drop rates) and the benchmarks'
random-weight models build here, so a checkpoint that does not fit an architecture is explained the same way
everywhere.
"""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import fer_edge

from fer_edge.models.bundled import bundled_model
from fer_edge.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, resolve_field, resolve_labels
from fer_edge.models.timm_compat import import_timm
from fer_edge.runtime.contract import ModelContract


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class PreparedModel:
    """A checkpoint turned into an eval-mode torch model and the contract its artifacts will carry."""
    checkpoint: Checkpoint
    model: object
    contract: ModelContract


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import onnxslim
    import torch
    timm = sys.modules.get("timm")
    return {"fer_edge": fer_edge.__version__, "torch": torch.__version__, "timm": getattr(timm, "__version__", "?"),
            "onnx": onnx.__version__, "onnxslim": onnxslim.__version__, "onnxruntime": onnxruntime.__version__}


def read_checkpoint(checkpoint: Optional[str], allow_pickle: bool = False) -> Checkpoint:
    """The given checkpoint, or the default bundled model when none is given."""
    if checkpoint is None:
        checkpoint = bundled_model().weights
    return load_checkpoint(checkpoint, allow_pickle=allow_pickle)


def model_contract(ckpt: Checkpoint, arch: Optional[str] = None, img_size: Optional[int] = None,
                   labels: Optional[List[str]] = None, mean: Optional[List[float]] = None,
                   std: Optional[List[float]] = None, interpolation: Optional[str] = None,
                   crop_margin: Optional[float] = None) -> ModelContract:
    """The contract the artifacts will carry; refuses an arch whose tensor shapes the checkpoint does not fit."""
    in_chans = ckpt.in_chans
    arch = resolve_field(ckpt, "arch", arch, "--arch")
    check_fits(arch, ckpt.num_classes, in_chans, ckpt.state_dict)
    size = int(resolve_field(ckpt, "img_size", img_size, "--img-size"))
    default_mean, default_std = ([0.5], [0.5]) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    contract = ModelContract(
        arch=arch, labels=resolve_labels(ckpt, labels), input_size=size, channels=in_chans,
        color_order="GRAY" if in_chans == 1 else "RGB",
        mean=[float(v) for v in resolve_field(ckpt, "mean", mean, "--mean", default_mean)],
        std=[float(v) for v in resolve_field(ckpt, "std", std, "--std", default_std)],
        interpolation=resolve_field(ckpt, "interpolation", interpolation, "--interpolation", "area"),
        crop_margin=float(resolve_field(ckpt, "crop_margin", crop_margin, "--crop-margin", 0.1)),
        source_weights_sha256=ckpt.sha256, versions=_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return contract.validate()


def prepare_model(checkpoint: Optional[str] = None, arch: Optional[str] = None, img_size: Optional[int] = None,
                  labels: Optional[List[str]] = None, mean: Optional[List[float]] = None,
                  std: Optional[List[float]] = None, interpolation: Optional[str] = None,
                  crop_margin: Optional[float] = None, allow_pickle: bool = False) -> PreparedModel:
    ckpt = read_checkpoint(checkpoint, allow_pickle)
    contract = model_contract(ckpt, arch, img_size, labels, mean, std, interpolation, crop_margin)
    return PreparedModel(ckpt, build_from_checkpoint(ckpt, contract), contract)


def build_from_checkpoint(ckpt: Checkpoint, contract: ModelContract):
    """The eval-mode torch model of a checkpoint, built for the architecture its contract names."""
    return build_model(contract.arch, ckpt.num_classes, contract.channels, ckpt.state_dict)


# What the fit search tries when a checkpoint does not fit --arch (a tf_ variant and its plain twin have the same
# shapes). The l/xl sizes are left out: building each costs 0.6-0.8 s even on the meta device, and they are far
# too large for edge FER; the search over these ten takes ~1.5 s.
FIT_CANDIDATES = ("tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2", "tf_efficientnetv2_b3",
                  "efficientnetv2_rw_t", "tf_efficientnetv2_s", "efficientnetv2_s", "efficientnetv2_rw_s",
                  "tf_efficientnetv2_m", "efficientnetv2_m")


# BatchNorm fills in a missing counter itself, and fp16 .safetensors files leave these int64 buffers out.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def check_arch_name(arch: str) -> None:
    """Refuse an architecture name timm does not know, listing the closest names it does."""
    import difflib
    timm = import_timm()
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6) or list(FIT_CANDIDATES[:4])
    raise CheckpointError(f"--arch {arch!r} is not a timm model; did you mean one of {', '.join(close)}? "
                          "Pass the timm name of the architecture the checkpoint was trained with.")


def _shapes(state_dict) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(_OPTIONAL_SUFFIX)}


def _shell_shapes(arch: str, num_classes: int, in_chans: int) -> Dict[str, tuple]:
    """Parameter shapes of an arch, from a model built on the meta device: no memory, no weights, 0.1-0.4 s."""
    import torch
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return _shapes(model.state_dict())


def _fitting_archs(ckpt_shapes: Dict[str, tuple], num_classes: int, in_chans: int, skip: str) -> List[str]:
    timm = import_timm()
    return [name for name in FIT_CANDIDATES if name != skip and timm.is_model(name)
            and _shell_shapes(name, num_classes, in_chans) == ckpt_shapes]


def _mismatch_text(arch: str, model_shapes: Dict[str, tuple], ckpt_shapes: Dict[str, tuple]) -> Optional[str]:
    """None when every tensor fits; else the counts and a few names with both shapes."""
    def dims(shape):
        return "x".join(map(str, shape)) or "scalar"
    wrong = [k for k in model_shapes if k in ckpt_shapes and model_shapes[k] != ckpt_shapes[k]]
    missing = [k for k in model_shapes if k not in ckpt_shapes]
    unexpected = [k for k in ckpt_shapes if k not in model_shapes]
    if not (wrong or missing or unexpected):
        return None
    parts = []
    if wrong:
        examples = "; ".join(f"{k}: checkpoint {dims(ckpt_shapes[k])}, {arch} {dims(model_shapes[k])}"
                             for k in wrong[:3])
        parts.append(f"{len(wrong)} of its {len(ckpt_shapes)} tensors have other shapes than in {arch} ({examples})")
    if missing:
        parts.append(f"{len(missing)} tensors of {arch} are missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors are not in {arch} (e.g. {', '.join(unexpected[:2])})")
    return ", ".join(parts)


def check_fits(arch: str, num_classes: int, in_chans: int, state_dict, model_shapes=None) -> None:
    """Refuse a state_dict whose tensors do not fit arch, naming the archs whose shapes it does fit."""
    check_arch_name(arch)
    ckpt_shapes = _shapes(state_dict)
    problem = _mismatch_text(arch, model_shapes or _shell_shapes(arch, num_classes, in_chans), ckpt_shapes)
    if problem is None:
        return
    fits = _fitting_archs(ckpt_shapes, num_classes, in_chans, skip=arch)
    if fits:
        twins = " (same shapes; the tf_ variant pads like TensorFlow)" if len(fits) > 1 else ""
        fix = f"Its tensors fit {' and '.join(fits)}{twins}: export with --arch {fits[0]}, or the one it was trained with"
    else:
        fix = (f"Its tensors fit none of {', '.join(FIT_CANDIDATES)}: pass --arch with the timm architecture "
               "it was trained with, or check that this is the right file")
    raise CheckpointError(f"the checkpoint does not fit {arch}: {problem}. {fix}.")


def create_model(arch: str, num_classes: int, in_chans: int, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
    """A timm model with fresh random weights (never downloads pretrained ones), in train mode.

    drop_rate / drop_path_rate are the training regularisers (dropout before the classifier, stochastic depth);
    they do nothing in eval mode, so export and benchmarks leave them at 0.
    """
    check_arch_name(arch)
    return import_timm().create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                      drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def build_model(arch: str, num_classes: int, in_chans: int, state_dict):
    """Create the timm model and load weights strictly, with a readable error on mismatch."""
    model = create_model(arch, num_classes, in_chans)
    check_fits(arch, num_classes, in_chans, state_dict, model_shapes=_shapes(model.state_dict()))
    model.load_state_dict(state_dict)
    return model.eval()
