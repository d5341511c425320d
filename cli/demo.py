"""fer-demo: run the detect -> classify -> smooth pipeline on an image, folder, video, webcam or stream."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import cv2

from fer_edge.cli.demo_report import TrackReport, photo_lines
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.export.reference import (bundled_name_in, find_reference_export, reference_model_path,
                                       reference_weights_sha256)
from fer_edge.models.artifact_writer import atomic_write_bytes
from fer_edge.pipeline.annotate import annotate
from fer_edge.pipeline.detectors import create_detector
from fer_edge.pipeline.fer_pipeline import FerPipeline
from fer_edge.pipeline.video_io import IMAGE_SUFFIXES, open_source
from fer_edge.runtime.errors import FerEdgeError
from fer_edge.runtime.model import ONNX_BACKENDS, load
from fer_edge.runtime.openvino_backend import import_openvino


# Output suffix -> the fourcc cv2.VideoWriter writes it with.
VIDEO_WRITER_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}

EPILOG = """examples:
  fer-demo photo.png                                  # prints each face: label, score, box
  fer-demo clip.mp4 --out annotated.mp4 --jsonl faces.jsonl
  fer-demo photos/ --out annotated_photos/            # image folder in, image folder out
  fer-demo group.jpg --detector-size 640 --out group_annotated.jpg   # small faces: a larger detector input
  fer-demo 0 --show                                   # webcam 0 with a window (needs a display)
  fer-demo rtsp://camera.local/stream --model fer-artifacts/model.onnx --jsonl - --quiet

Photos: one line per face (label, score, box x y w h). Videos and cameras: a line when a person appears or
their shown expression changes, and a per-person summary at the end. --quiet prints only errors.
Without --model the bundled reference model is used: an existing export of it (in ~/.cache/fer-edge or
./fer-artifacts) or, on first use, a new one (a few minutes; needs the [export] extra:
pip install 'fer-edge[export]'). SOURCE, --out and --jsonl are checked before that.
Without --detector the bundled YuNet face detector is used; --detector haar picks OpenCV's Haar cascade.
Ctrl-C stops cleanly: the output video and JSON Lines file are finalised.
"""


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("fer-demo", description="Facial-expression recognition on images, videos and cameras: detect "
                   "faces, classify them in one batch, track and smooth per person.", epilog=EPILOG)
    p.add_argument("source", metavar="SOURCE", help="image, image folder, video file, webcam index (0) or rtsp/http URL")
    p.add_argument("--model", help="FER artifact (.onnx, or .engine for TensorRT), or a bundled model by name: "
                   "fer2013 (the default, 7 classes) or ferplus (8 classes)")
    p.add_argument("--detector", help="face detector: a YuNet .onnx, 'yunet' (the bundled one, the default) or "
                   "'haar' (OpenCV 4's Haar cascade)")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="annotated output: a video file (.mp4/.avi/.mkv/.mov), a folder for images, or an "
                   "image file when SOURCE is one image")
    g.add_argument("--jsonl", help="write one JSON line per frame with every face's results to this file, or "
                   "to stdout with '-' (the lines for people then go to stderr)")
    g.add_argument("--show", action="store_true", help="show a window (press q or Esc to quit); needs a display")
    g.add_argument("--max-frames", type=int, help="stop after this many frames")
    g = p.add_argument_group("tuning")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime (default: its own choice)")
    g.add_argument("--backend", choices=ONNX_BACKENDS, default=None, help="backend of an .onnx classifier (default "
                   "onnxruntime; openvino runs INT8 ONNX ~1.5x faster on x86 CPUs: docs/cpu_kiosk.md)")
    g.add_argument("--score-threshold", type=float, default=None, help="YuNet face score threshold (default 0.6)")
    g.add_argument("--detector-size", type=int, default=None, help="YuNet input size: frames are scaled to fit it "
                   "(default 320 for the bundled and dynamic models; 640 finds smaller faces, ~4x slower)")
    g.add_argument("--smoothing", choices=("ema", "window", "none"), default="ema", help="per-track smoothing (default ema)")
    g.add_argument("--alpha", type=float, default=0.3, help="EMA weight of the newest frame (default 0.3)")
    g.add_argument("--window", type=int, default=8, help="frames in the vote window (default 8)")
    g.add_argument("--margin", type=float, default=0.1, help="hysteresis: lead a new label needs (default 0.1)")
    g.add_argument("--hold", type=int, default=2, help="hysteresis: frames the lead must last (default 2)")
    g.add_argument("--live", action="store_true", help="treat a video file as a live stream (drop to the newest frame)")
    g.add_argument("--quiet", action="store_true", help="print only errors: no lines per face, no summary, no "
                   "progress bar")
    return p


def check_display() -> None:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise FerEdgeError("--show needs a display, and none is set (no DISPLAY/WAYLAND_DISPLAY). Use --out to save "
                           "annotated frames instead.")
    try:
        cv2.namedWindow("fer-demo", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise FerEdgeError("--show needs OpenCV with GUI support, but opencv-python-headless has none. "
                           "pip install opencv-python (instead of -headless) or use --out.") from None


class AnnotatedOutput:
    """Annotated frames to a video file (finalised on close) or to numbered images in a folder."""

    def __init__(self, path: str, fps: Optional[float], single_image: bool = False):
        self.path = Path(path)
        self.fourcc = VIDEO_WRITER_CODECS.get(self.path.suffix.lower())
        self.fps = fps or 10.0
        self.writer = None
        self.image_file = self.path.suffix.lower() in IMAGE_SUFFIXES
        if self.image_file:
            if not single_image:
                raise FerEdgeError(f"--out {path} is an image file, but SOURCE is not a single image; give a video "
                                   f"file ({'/'.join(VIDEO_WRITER_CODECS)}) or a folder name")
            if not self.path.parent.exists():
                raise FerEdgeError(f"--out {path}: folder {self.path.parent} does not exist")
        elif self.fourcc is None:
            if self.path.suffix and not self.path.is_dir():
                raise FerEdgeError(f"--out {path}: unknown video type {self.path.suffix!r}; use "
                                   f"{'/'.join(VIDEO_WRITER_CODECS)} for a video, or a folder name for images")
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.parent.exists():
            raise FerEdgeError(f"--out {path}: folder {self.path.parent} does not exist")

    def write(self, image, name: str) -> None:
        if self.image_file:
            ok, data = cv2.imencode(self.path.suffix, image)
            if not ok:
                raise FerEdgeError(f"OpenCV cannot encode {self.path.suffix} images")
            atomic_write_bytes(self.path, data.tobytes())
            return
        if self.fourcc is None:
            stem = Path(name).stem
            if not cv2.imwrite(str(self.path / f"{stem}.jpg"), image):
                raise FerEdgeError(f"cannot write {self.path / (stem + '.jpg')}")
            return
        if self.writer is None:
            h, w = image.shape[:2]
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self.writer.isOpened():
                raise FerEdgeError(f"OpenCV cannot write {self.path} with codec {self.fourcc}; try an .avi file")
        if (image.shape[1], image.shape[0]) != self.size:  # folders of mixed-size images into one video
            image = cv2.resize(image, self.size)
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class StopOnCtrlC:
    """The first Ctrl-C asks the loop to stop after the current frame, so the video and the JSON Lines
    file hold the same frames; a second Ctrl-C interrupts at once (outputs are still finalised)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def check_jsonl_target(path: str) -> None:
    """Fail before the slow steps; the file itself is opened (and truncated) only once the model is loaded."""
    if path == "-":
        return
    folder = Path(path).resolve().parent
    if Path(path).is_dir():
        raise FerEdgeError(f"--jsonl {path} is a folder; give a file name, or - for stdout")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise FerEdgeError(f"--jsonl {path}: folder {folder} does not exist or is not writable")


def open_inputs(args):
    """Detector, SOURCE, --out and --jsonl, each checked in well under a second and before any model export."""
    if args.show:
        check_display()
    if args.backend == "openvino":
        import_openvino()       # not installed: say so now, not after a first-use export
    options = {"input_size": args.detector_size} if args.detector_size else {}
    detector = create_detector(args.detector, score_threshold=args.score_threshold, threads=args.threads, **options)
    source = open_source(args.source, live=True if args.live else None)
    try:
        output = AnnotatedOutput(args.out, source.fps, single_image=source.kind == "image") if args.out else None
        if args.jsonl:
            check_jsonl_target(args.jsonl)
    except (OSError, FerEdgeError) as exc:
        source.close()
        raise FerEdgeError(str(exc)) from None
    return detector, source, output


def resolve_model(args, source, say):
    """--model: an artifact, or a bundled model (reused if exported before). A live source is closed during a
    first-use export and opened again after it, so minutes of camera frames are not read and counted as dropped."""
    name = bundled_name_in(args.model)
    if name is None:
        return args.model, source
    if source.is_live and find_reference_export(reference_weights_sha256(name)) is None:
        source.close()
        model = reference_model_path(name, log=say)
        return model, open_source(args.source, live=True if args.live else None)
    return reference_model_path(name, log=say), source


def run(args) -> int:
    from tqdm import tqdm

    human = sys.stderr if args.jsonl == "-" else sys.stdout       # keep stdout machine-readable with --jsonl -

    def say(message: str, stream=sys.stderr) -> None:
        if not args.quiet:
            tqdm.write(message, file=stream)    # above the progress bar, not through it
            stream.flush()

    detector, source, output = open_inputs(args)
    try:
        model, source = resolve_model(args, source, say)
        if args.backend:
            model = load(model, backend=args.backend, threads=args.threads)
        pipeline = FerPipeline(model, detector=detector, threads=args.threads,
                               smoothing={"method": args.smoothing, "alpha": args.alpha, "window": args.window,
                                          "margin": args.margin, "hold": args.hold})
        jsonl = None if not args.jsonl else sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")
    except BaseException:
        source.close()
        if output:
            output.close()
        raise
    photos = source.kind in ("image", "folder")
    tracks = TrackReport()
    total = source.frame_count
    if args.max_frames:
        total = min(total, args.max_frames) if total else args.max_frames
    bar = tqdm(total=total, unit="frame", disable=args.quiet or photos or None, file=sys.stderr)
    frames = faces = 0
    stop = StopOnCtrlC()
    started = time.perf_counter()
    try:
        with stop:
            for frame in source:
                if photos:
                    pipeline.reset()    # unrelated photos: no tracks or smoothing carried from one to the next
                t0 = time.perf_counter()
                results = pipeline(frame.image)
                elapsed = (time.perf_counter() - t0) * 1e3
                frames += 1
                faces += len(results)
                for line in photo_lines(frame.name, results) if photos else tracks.update(frame.index, results):
                    say(line, human)
                if jsonl:
                    record = {"frame": frame.index, "name": frame.name, "latency_ms": round(elapsed, 2),
                              "stages_ms": {k: round(v, 2) for k, v in pipeline.last_timings.items()},
                              "faces": [r.to_dict() for r in results]}
                    jsonl.write(json.dumps(record) + "\n")
                if output or args.show:
                    image = annotate(frame.image, results)
                    if output:
                        output.write(image, frame.name)
                    if args.show:
                        cv2.imshow("fer-demo", image)
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            break
                bar.update(1)
                if stop.requested or (args.max_frames and frames >= args.max_frames):
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop mid-frame, still finalise the outputs
        stop.requested = True
    except BrokenPipeError:    # the reader of stdout went away (`--jsonl - | head`): stop, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        return 0
    finally:
        bar.close()
        source.close()
        if output:
            output.close()
        if jsonl is not None and jsonl is not sys.stdout:
            jsonl.close()
        if args.show:
            cv2.destroyAllWindows()
    interrupted = stop.requested
    if not photos:
        for line in tracks.summary():
            say(line, human)
    seconds = time.perf_counter() - started
    note = " (stopped by Ctrl-C; outputs finalised)" if interrupted else ""
    dropped = f", {source.dropped} stale frames skipped" if source.is_live else ""
    line = f"fer-demo: {frames} frames, {faces} faces, {frames / max(seconds, 1e-9):.1f} frames/s{dropped}{note}"
    if interrupted:     # even with --quiet: the outputs hold fewer frames than the source
        print(line, file=sys.stderr)
    else:
        say(line)
    if args.out:
        say(f"annotated output: {args.out}")
    if args.jsonl and args.jsonl != "-":
        say(f"per-frame results: {args.jsonl}")
    return 130 if interrupted else 0


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fer-demo: %(message)s")
    if args.max_frames is not None and args.max_frames < 1:
        raise FerEdgeError("--max-frames must be >= 1")
    try:
        return run(args)
    except ValueError as exc:  # the pipeline parts check their options (--alpha, --window, YuNet sizes) with ValueError
        raise FerEdgeError(str(exc)) from None


def main(argv=None) -> int:
    # Ctrl-C during processing is handled by run(); one that reaches here came during model loading or export.
    return run_cli("fer-demo", _main, argv, interrupted="interrupted before processing started; nothing written")


if __name__ == "__main__":
    sys.exit(main())
