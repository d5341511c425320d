"""Frame sources for the demo and the robot loop: image file, image folder, video file, webcam, RTSP/HTTP URL.

    with open_source("0") as source:          # webcam 0; "clip.mp4", "photos/", "rtsp://..." also work
        for frame in source:
            ...frame.image (BGR uint8), frame.index, frame.name

Live sources (webcam, URL) read on a background thread that keeps only the newest frame, so a slow
consumer sees fresh frames and latency never builds up; frames it skipped are counted in `dropped`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import cv2
import numpy as np

from fer_edge.runtime.errors import DataError

# File names the image readers accept (fer-demo sources and image-folder datasets).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
URL_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Frame:
    index: int
    image: np.ndarray
    name: str              # file name for images, "frame_000123" otherwise
    timestamp: float       # time.monotonic() when the frame was read


def read_image(path: os.PathLike) -> np.ndarray:
    """Read an image file as uint8 BGR (or gray for single-channel files); DataError when it cannot be read.

    The one image reader of fer-demo, fer-bench, fer-export and calibration. 16-bit files keep their top
    8 bits (value >> 8, so 65535 -> 255): a fixed full-scale rule, so a pixel's value never depends on the
    rest of the image. Stretching by the image's own maximum instead made a dim face as bright as a lit one.
    """
    try:  # fromfile + imdecode rather than cv2.imread, which fails on non-ASCII paths on Windows
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None or image.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt, or not an image despite its name)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DataError(f"{path}: pixel type {image.dtype} is not supported; save it as an 8- or 16-bit image")
    return image


class FrameSource:
    kind = "base"
    is_live = False
    frame_count: Optional[int] = None
    fps: Optional[float] = None
    dropped = 0

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageFilesSource(FrameSource):
    """One image file or every image in a folder (sorted by name)."""

    def __init__(self, paths: List[Path], kind: str):
        self.paths, self.kind = paths, kind
        self.frame_count = len(paths)

    def frames(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            yield Frame(i, read_image(path), path.name, time.monotonic())


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order (no dropping: files are processed completely)."""
    kind = "video"

    def __init__(self, path: str):
        self.path = path
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            raise DataError(f"{path}: OpenCV cannot open this video (unsupported codec or corrupt file)")
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, image = self.capture.read()
            if not ok or image is None:
                return
            yield Frame(index, image, f"frame_{index:06d}", time.monotonic())
            index += 1

    def close(self) -> None:
        self.capture.release()


class LatestFrameSource(FrameSource):
    """A webcam or network stream read on a thread that keeps only the newest frame."""
    is_live = True

    def __init__(self, target, kind: str, open_timeout_s: float = 10.0):
        self.kind, self.target = kind, target
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            hint = "is a camera connected, and is this index right?" if kind == "webcam" else \
                "is the URL reachable and the stream format supported by OpenCV's FFmpeg?"
            raise DataError(f"cannot open {kind} {target!r}: {hint}")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        self._cond = threading.Condition()
        self._latest: Optional[np.ndarray] = None
        self._seq = 0
        self._ended = False
        self._stop = threading.Event()
        self.dropped = 0
        self.open_timeout_s = open_timeout_s
        self._thread = threading.Thread(target=self._reader, name=f"fer-edge-{kind}-reader", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while not self._stop.is_set():
            ok, image = self.capture.read()
            with self._cond:
                if not ok or image is None:
                    self._ended = True
                    self._cond.notify_all()
                    return
                self._latest = image
                self._seq += 1
                self._cond.notify_all()

    def frames(self) -> Iterator[Frame]:
        seen, index = 0, 0
        started = time.monotonic()
        while True:
            with self._cond:
                while self._seq == seen and not self._ended:
                    if not self._cond.wait(timeout=0.5) and seen == 0 and \
                            time.monotonic() - started > self.open_timeout_s:
                        raise DataError(f"{self.kind} {self.target!r} opened but sent no frame within "
                                        f"{self.open_timeout_s:.0f} s")
                if self._seq == seen:  # ended and nothing new
                    return
                self.dropped += self._seq - seen - 1
                seen, image = self._seq, self._latest
            yield Frame(index, image, f"frame_{index:06d}", time.monotonic())
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.capture.release()


def open_source(spec, live: Optional[bool] = None) -> FrameSource:
    """Open an image, folder, video file, webcam index ("0") or stream URL.

    live forces (True) or disables (False) latest-frame dropping; by default webcams and URLs are live.
    """
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        return LatestFrameSource(int(text), "webcam") if live is not False else _plain_capture(int(text))
    if text.lower().startswith(URL_PREFIXES):
        return LatestFrameSource(text, "stream") if live is not False else _plain_capture(text)
    path = Path(text)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageFilesSource(images, "folder")
    if not path.exists():
        raise DataError(f"{text}: no such file or folder. SOURCE is an image, a folder of images, a video file, "
                        "a webcam index such as 0, or an rtsp:// / http:// URL")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFilesSource([path], "image")
    return LatestFrameSource(text, "video") if live else VideoFileSource(text)


def _plain_capture(target) -> FrameSource:
    source = VideoFileSource.__new__(VideoFileSource)
    source.path = str(target)
    source.capture = cv2.VideoCapture(target)
    if not source.capture.isOpened():
        raise DataError(f"cannot open {target!r}")
    source.frame_count, source.fps = None, None
    source.kind = "capture"
    return source
