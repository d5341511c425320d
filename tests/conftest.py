"""Shared fixtures: a small timm EfficientNetV2 fitted on synthetic faces, exported once per session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_EDGE_SHARED", REPO.parent / "shared"))
FER2013_DIR = SHARED / "data" / "fer2013"
PUBLICTEST_NPZ = FER2013_DIR / "fer2013_publictest.npz"
YUNET_DIR = SHARED / "models" / "yunet"
FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

needs_shared = pytest.mark.skipif(not PUBLICTEST_NPZ.exists(),
                                  reason=f"needs FER-2013 from ../shared ({PUBLICTEST_NPZ} not found)")


def synthetic_faces(n: int, size: int = 32, seed: int = 0, classes: int = 7):
    """uint8 'faces' whose class is a bright square at one of 9 grid positions: learnable in seconds."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    cell = size // 3
    for i, c in enumerate(y):
        r, col = divmod(int(c), 3)
        x[i, r * cell + 1:r * cell + cell - 1, col * cell + 1:col * cell + cell - 1] = 220
    return x, y


def has_torch_stack() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "timm", "onnx", "onnxslim"))


needs_export_stack = pytest.mark.skipif(not has_torch_stack(), reason="needs the [export] extra (torch, timm, onnx)")


@pytest.fixture(scope="session")
def fitted_checkpoint(tmp_path_factory) -> Path:
    """A tf_efficientnetv2_b0 (1 channel, 7 classes, 32 px) fitted for a few steps so its logits are decisive."""
    import torch
    from fer_edge.export.timm_compat import import_timm
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnetv2_b0", num_classes=7, in_chans=1)
    x, y = synthetic_faces(512)
    xs = torch.from_numpy((x[:, None].astype(np.float32) / 255 - 0.5) / 0.5)
    ys = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    for _ in range(30):
        idx = torch.randint(0, len(xs), (48,))
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "fitted.pt"
    torch.save({"format": "fer_edge.checkpoint.v1", "arch": "tf_efficientnetv2_b0", "img_size": 32, "in_chans": 1,
                "labels": FER2013_LABELS, "mean": [0.5], "std": [0.5], "interpolation": "area",
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="session")
def synthetic_npz(tmp_path_factory) -> Path:
    """An npz in the shared FER-2013 layout (x, y, split, class_names), from synthetic faces."""
    x, y = synthetic_faces(300, seed=1)
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, x=x, y=y.astype(np.uint8), split=np.r_[np.zeros(200, np.uint8), np.ones(100, np.uint8)],
             class_names=np.array(FER2013_LABELS), split_names=np.array(["Training", "PublicTest", "PrivateTest"]))
    return path


@pytest.fixture(scope="session")
def exported(fitted_checkpoint, synthetic_npz, tmp_path_factory):
    """FP32 and FP16 ONNX exported from the fitted checkpoint (parity on the synthetic npz)."""
    from fer_edge.export.exporter import export_model
    out = tmp_path_factory.mktemp("artifacts")
    return export_model(checkpoint=str(fitted_checkpoint), fp16=True, out_dir=str(out),
                        parity_data=str(synthetic_npz), log=lambda m: None)
