"""fer-bench --pipeline SOURCE: per-stage latency of the detect -> crop -> classify -> smooth pipeline.

Frames are composed at a fixed size (default 640x480) with 1, 4 and 8 faces cut from SOURCE (an
image/video/folder with faces, or FER crops in an .npz/.csv), JPEG-encoded once, and then each
timed frame decodes the JPEG (the "decode" stage, like a camera's MJPEG stream) and runs the
pipeline. Each face count runs as a stream of --frames-in-a-row frames, as a camera sees a steady scene, and
the streams are interleaved so machine noise hits every configuration alike. (Alternating the face count
every frame measured the 1-face classifier 0.8 ms slower than a steady stream: each batch size's compiled
model and weights leave the caches in between.) The first frame of each stream follows a change of face count
and pays for it: it shows in p90/p99, not in p50 unless the streams are very short.
A second run measures smoothing: one face repeated with jitter, noise and brightness changes, the
number of raw top-1 label changes against smoothed label changes.

    fer-bench --pipeline photo.png --model model.onnx --threads 1       # detector: the bundled YuNet at 320 px
    python -m fer_edge.benchmarks.pipeline_bench --pipeline photo.png --model model.onnx --report out/
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from fer_edge.benchmarks.latency import run_interleaved, summarize
from fer_edge.benchmarks.report import environment, environment_markdown, load_average
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.data.datasets import load_faces
from fer_edge.export.reference import bundled_name_in, reference_model_path
from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json
from fer_edge.pipeline.detection import to_bgr
from fer_edge.pipeline.detectors import create_detector
from fer_edge.pipeline.fer_pipeline import FerPipeline
from fer_edge.pipeline.smoothing import count_flips
from fer_edge.pipeline.video_io import open_source
from fer_edge.runtime import load
from fer_edge.runtime.artifact_io import sha256_file
from fer_edge.runtime.errors import DataError, FerEdgeError


DEFAULT_FACES = "1,4,8"
DEFAULT_FRAME = "640x480"
DEFAULT_ITERATIONS = 100
DEFAULT_WARMUP = 10
DEFAULT_FRAMES_IN_A_ROW = 10
CROP_SUFFIXES = (".npz", ".csv")
TARGET_P50_MS = 5.0  # the kiosk goal (issue #12): 640x480, one face, bundled YuNet + reference FP32, 1 thread


def _add_once(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """fer-bench already defines --model, --threads, --warmup ...; add only what is missing."""
    if flag not in parser._option_string_actions:  # argparse has no public lookup
        parser.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pipeline benchmark (fer-bench --pipeline SOURCE)")
    _add_once(g, "--pipeline", metavar="SOURCE",
              help="benchmark the whole pipeline on frames built from SOURCE: an image/video/folder with faces, or "
                   "FER crops (.npz/.csv); the model is --model (default: the bundled reference model)")
    _add_once(g, "--detector", metavar="DETECTOR", help="face detector for --pipeline: a YuNet .onnx, 'yunet' (the "
              "bundled one, the default) or 'haar' (OpenCV 4's Haar cascade)")
    _add_once(g, "--detector-size", type=int, default=None, metavar="N",
              help="YuNet input size (default 320 for the bundled and dynamic models)")
    _add_once(g, "--faces-per-frame", default=DEFAULT_FACES, metavar="LIST",
              help=f"faces per composed frame (default {DEFAULT_FACES})")
    _add_once(g, "--frame-size", default=DEFAULT_FRAME, metavar="WxH", help=f"composed frame size (default {DEFAULT_FRAME})")
    _add_once(g, "--frames-in-a-row", type=int, default=DEFAULT_FRAMES_IN_A_ROW, metavar="N",
              help=f"frames of one face count in a row before the next count's turn (default "
                   f"{DEFAULT_FRAMES_IN_A_ROW}; 1 alternates the count every frame)")
    _add_once(g, "--smoothing-frames", type=int, default=300, metavar="N",
              help="length of the constant-expression clip for the flip count (default 300; 0 = skip)")
    _add_once(g, "--pipeline-report", metavar="PREFIX",
              help="write PREFIX.md and PREFIX.json (default: print only; with --report DIR: DIR/pipeline.*)")
    _add_once(g, "--note", metavar="TEXT", help="free text for the report (e.g. which weights the model has)")
    # Shared with fer-bench; added here only when running standalone.
    _add_once(g, "--model", action="append", default=[], metavar="PATH", help="FER artifact (.onnx/.engine)")
    _add_once(g, "--backend", metavar="NAME", help="backend of the classifier .onnx (onnxruntime, openvino)")
    _add_once(g, "--threads", type=int, default=None, metavar="N", help="ONNX Runtime threads (detector and classifier)")
    _add_once(g, "--warmup", type=int, default=DEFAULT_WARMUP, metavar="N", help="untimed frames per face count")
    _add_once(g, "--iterations", type=int, default=None, metavar="N",
              help=f"timed frames per face count (default {DEFAULT_ITERATIONS})")
    _add_once(g, "--report", metavar="DIR", help="report folder")
    _add_once(g, "--no-progress", action="store_true", help="hide progress bars")


# ------------------------------------------------------------------ face material
def _parse_size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w >= 64 and h >= 64:
            return w, h
    except ValueError:
        pass
    raise FerEdgeError(f"--frame-size {text!r}: give WIDTHxHEIGHT of at least 64x64, e.g. 640x480")


def _parse_faces(text: str) -> List[int]:
    try:
        counts = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise FerEdgeError(f"--faces-per-frame {text!r}: give counts from 1 to 64 separated by commas, e.g. 1,4,8")
    return counts


def face_patches(source: str, detector, limit: int = 16) -> List[np.ndarray]:
    """BGR face patches with some context around the face, cut from SOURCE."""
    if source.lower().endswith(CROP_SUFFIXES):
        faces = load_faces(source, limit=limit)
        # FER crops are tight: give them a replicated border so a detector sees a head, not only a face.
        patches = []
        for img in faces.images[:limit]:
            img = cv2.cvtColor(np.asarray(img), cv2.COLOR_GRAY2BGR) if np.asarray(img).ndim == 2 else np.asarray(img)
            pad = img.shape[0] // 3
            patches.append(cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
        return patches
    patches = []
    with open_source(source, live=False) as frames:
        for i, frame in enumerate(frames):
            image = to_bgr(frame.image)
            h, w = image.shape[:2]
            for det in detector.detect(image):
                x, y, bw, bh = det.box
                cx, cy, side = x + bw / 2, y + bh / 2, max(bw, bh) * 1.8
                x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
                x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
                if x1 - x0 > 16 and y1 - y0 > 16:
                    patches.append(image[y0:y1, x0:x1].copy())
            if len(patches) >= limit or i >= 30:
                break
    if not patches:
        raise DataError(f"{source}: the detector found no face to build benchmark frames from; pass a photo with a "
                        "visible frontal face, or FER crops (.npz/.csv)")
    return patches[:limit]


def compose_frame(patches: Sequence[np.ndarray], count: int, size, seed: int = 0) -> np.ndarray:
    """A size[0] x size[1] BGR frame with `count` faces on a grid, cycling through the patches."""
    width, height = size
    cols = max(1, min(count, math.ceil(math.sqrt(count * width / height))))
    rows = math.ceil(count / cols)
    rng = np.random.default_rng(seed)
    frame = np.full((height, width, 3), 110, np.uint8)
    frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)  # some texture, not a flat background
    cell_w, cell_h = width // cols, height // rows
    for i in range(count):
        r, c = divmod(i, cols)
        patch = patches[i % len(patches)]
        scale = 0.85 * min(cell_w / patch.shape[1], cell_h / patch.shape[0])
        pw, ph = max(8, int(patch.shape[1] * scale)), max(8, int(patch.shape[0] * scale))
        resized = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        x0, y0 = c * cell_w + (cell_w - pw) // 2, r * cell_h + (cell_h - ph) // 2
        frame[y0:y0 + ph, x0:x0 + pw] = resized
    return frame


def jitter_clip(patch: np.ndarray, frames: int, size, seed: int = 0):
    """Frames of one face whose true expression never changes: shifted, scaled, noisy, brighter/darker."""
    rng = np.random.default_rng(seed)
    base = compose_frame([patch], 1, size, seed)
    height, width = base.shape[:2]
    for _ in range(frames):
        angle, scale = rng.uniform(-3, 3), rng.uniform(0.95, 1.05)
        m = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        m[:, 2] += rng.uniform(-8, 8, 2)
        frame = cv2.warpAffine(base, m, (width, height), borderMode=cv2.BORDER_REPLICATE)
        frame = frame.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
        frame += rng.normal(0, 8, frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ measurement
def measure_stages(pipeline, jpegs: Dict[str, bytes], warmup: int, iterations: Optional[int],
                   duration_s: Optional[float] = None, progress=None, in_a_row: int = 1):
    """Per configuration: samples of every stage and of end-to-end (decode + pipeline), in streams of
    `in_a_row` frames per configuration, the streams interleaved; `warmup` and `iterations` count rounds."""

    def make_call(name, data):
        buffer = np.frombuffer(data, np.uint8)

        def call():
            t0 = time.perf_counter()
            frame = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
            decode_ms = (time.perf_counter() - t0) * 1e3
            results = pipeline(frame)
            total_ms = (time.perf_counter() - t0) * 1e3
            stages = {f"{name}/{k}": v for k, v in pipeline.last_timings.items()}
            stages[f"{name}/decode"] = decode_ms
            stages[f"{name}/faces"] = float(len(results))
            stages[name] = total_ms
            return stages
        return call

    calls = {name: make_call(name, data) for name, data in jpegs.items()}
    return run_interleaved(calls, warmup, iterations=iterations, duration_s=duration_s, progress=progress,
                           block=in_a_row)


def smoothing_flips(pipeline, patch: np.ndarray, frames: int, size) -> Dict:
    pipeline.reset()
    raw, smoothed, missing = [], [], 0
    for frame in jitter_clip(patch, frames, size):
        results = pipeline(frame)
        if len(results) != 1:
            missing += 1
            continue
        raw.append(results[0].label)
        smoothed.append(results[0].smoothed_label)
    pipeline.reset()
    raw_flips, smooth_flips = count_flips(raw), count_flips(smoothed)
    return {"frames": frames, "frames_with_one_face": len(raw), "frames_skipped": missing,
            "raw_top1_changes": raw_flips, "smoothed_label_changes": smooth_flips,
            "reduction": (raw_flips / smooth_flips) if smooth_flips else (float("inf") if raw_flips else 1.0),
            "raw_label_counts": {k: raw.count(k) for k in sorted(set(raw))},
            "smoothed_label_counts": {k: smoothed.count(k) for k in sorted(set(smoothed))},
            "smoothing": vars(pipeline.smoother.config).copy()}


def _command_line() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv else "fer-bench"
    if prog in ("pipeline_bench.py", "__main__.py"):
        prog = "python -m fer_edge.benchmarks.pipeline_bench"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def run(args) -> int:
    from tqdm import tqdm

    size = _parse_size(args.frame_size)
    counts = _parse_faces(args.faces_per_frame)
    duration = getattr(args, "duration", None)  # fer-bench's --duration, when given, replaces --iterations
    iterations = None if duration else (args.iterations or DEFAULT_ITERATIONS)
    in_a_row = args.frames_in_a_row
    if (iterations is not None and iterations < 1) or args.warmup < 0 or (duration is not None and duration <= 0) \
            or in_a_row < 1:
        raise FerEdgeError("--iterations and --frames-in-a-row must be >= 1, --duration > 0 and --warmup >= 0")
    rounds = None if iterations is None else math.ceil(iterations / in_a_row)
    models = [*getattr(args, "models", []), *(args.model or [])]
    if len(models) > 1:
        raise FerEdgeError("--pipeline benchmarks one model; pass a single --model")
    name = bundled_name_in(models[0] if models else None)
    model_path = models[0] if name is None else str(reference_model_path(name, log=lambda m: print(m, file=sys.stderr)))
    options = {"input_size": args.detector_size} if args.detector_size else {}
    detector = create_detector(args.detector, threads=args.threads, **options)
    backend = getattr(args, "backend", None)
    if backend and "," in backend:
        raise FerEdgeError(f"--backend {backend}: --pipeline runs one classifier backend; name one "
                           "(e.g. --backend openvino)")
    classifier = load(model_path, backend=backend, threads=args.threads) if backend else model_path
    pipeline = FerPipeline(classifier, detector=detector, threads=args.threads)
    patches = face_patches(args.pipeline, detector)
    load_at_start = load_average()

    frames = {f"{n}_faces": compose_frame(patches, n, size, seed=n) for n in counts}
    jpegs = {name: cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for name, f in frames.items()}
    bar = tqdm(total=rounds, unit="round", desc="pipeline", disable=args.no_progress or None, file=sys.stderr)
    samples = measure_stages(pipeline, jpegs, math.ceil(args.warmup / in_a_row), rounds, duration, bar, in_a_row)
    bar.close()
    if iterations is not None:  # whole streams ran; every configuration keeps its first `iterations` frames
        samples = {key: values[:iterations] for key, values in samples.items()}
    configs = {}
    for n in counts:
        name = f"{n}_faces"
        found = samples[f"{name}/faces"]
        stats = {"end_to_end": summarize(samples[name])}
        stats.update({stage: summarize(samples[f"{name}/{stage}"]) for stage in ("decode", *pipeline.last_timings)})
        configs[name] = {"faces_composed": n, "faces_detected_min": int(min(found)), "faces_detected_max": int(max(found)),
                         "fps_p50": 1000.0 / stats["end_to_end"]["median"], "stages": stats}
    smoothing = None
    if args.smoothing_frames:
        smoothing = smoothing_flips(pipeline, patches[0], args.smoothing_frames, size)

    model = pipeline.model
    report = {
        "command": _command_line(),
        "environment": {**environment(_command_line()), "load_average_at_start": load_at_start},
        "source": args.pipeline, "frame_size": list(size), "iterations": len(samples[f"{counts[0]}_faces"]),
        "warmup": args.warmup, "frames_in_a_row": in_a_row,
        "threads": args.threads, "note": args.note or "",
        "model": {"path": str(model.path), "file": model.path.name, "sha256": sha256_file(model.path),
                  "weights_sha256": model.contract.source_weights_sha256, "precision": model.precision,
                  "backend": model.backend.name, "input": [model.contract.channels, model.contract.input_size]},
        "detector": repr(detector), "configs": configs, "smoothing": smoothing,
    }
    text = to_markdown(report)
    print(text)
    prefix = args.pipeline_report or (os.path.join(args.report, "pipeline") if args.report else None)
    if prefix:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(prefix + ".md", text.encode())
        atomic_write_json(prefix + ".json", report)
        print(f"report: {prefix}.md, {prefix}.json", file=sys.stderr)
    return 0


def _reduction_line(sm: Dict) -> str:
    if sm["raw_top1_changes"] == 0:
        return "The raw top-1 never changed on this clip, so there was nothing to smooth."
    if sm["smoothed_label_changes"] == 0:
        return f"The smoothed label never changed (raw top-1: {sm['raw_top1_changes']} changes)."
    return f"Reduction: {sm['reduction']:.1f}x fewer label changes."


def to_markdown(report: Dict) -> str:
    env, model = report["environment"], report["model"]
    lines = ["# Pipeline latency: decode -> detect -> crop -> classify -> smooth", "",
             environment_markdown(env),
             f"- model: `{model['file']}` ({model['precision']}, {model['backend']}, {model['input'][0]}x"
             f"{model['input'][1]}px, weights sha256 {model['weights_sha256'][:12]})",
             f"- detector: `{report['detector']}`; threads: {report['threads'] or 'ONNX Runtime default'}",
             f"- frames: {report['frame_size'][0]}x{report['frame_size'][1]} composed from faces in "
             f"`{os.path.basename(str(report['source']))}`, JPEG-decoded every frame; "
             f"{report['iterations']} timed frames per face count after {report['warmup']} warm-up frames, "
             + (f"in streams of {report['frames_in_a_row']} frames in a row per face count, the streams interleaved"
                if report.get("frames_in_a_row", 1) > 1 else "the face count alternating every frame")]
    if report["note"]:
        lines.append(f"- note: {report['note']}")
    lines += ["", "| faces (detected) | stage | p50 ms | p90 ms | p99 ms | mean ms | min ms |",
              "|---|---|---|---|---|---|---|"]
    for name, cfg in report["configs"].items():
        found = f"{cfg['faces_composed']} ({cfg['faces_detected_min']}" + (
            f"-{cfg['faces_detected_max']})" if cfg["faces_detected_max"] != cfg["faces_detected_min"] else ")")
        for stage, s in cfg["stages"].items():  # end_to_end first, then decode and the pipeline's stages
            label = f"**{stage}**" if stage == "end_to_end" else stage
            lines.append(f"| {found} | {label} | {s['median']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | "
                         f"{s['mean']:.2f} | {s['min']:.2f} |")
    lines += ["", "| faces | end-to-end p50 ms | FPS at p50 |", "|---|---|---|"]
    for name, cfg in report["configs"].items():
        lines.append(f"| {cfg['faces_composed']} | {cfg['stages']['end_to_end']['median']:.2f} | {cfg['fps_p50']:.1f} |")
    one = report["configs"].get("1_faces")
    if one:
        p50 = one["stages"]["end_to_end"]["median"]
        verdict = "within" if p50 <= TARGET_P50_MS else "over"
        lines += ["", f"One face: end-to-end p50 {p50:.2f} ms, {verdict} the {TARGET_P50_MS:.0f} ms target "
                      f"(best round {one['stages']['end_to_end']['min']:.2f} ms)."]
    sm = report.get("smoothing")
    if sm:
        cfg = sm["smoothing"]
        lines += ["", "## Smoothing on a constant-expression clip", "",
                  f"{sm['frames']} frames of one face with random shift, rotation, scale, brightness and noise "
                  f"({sm['frames_with_one_face']} with exactly one face detected). Smoothing: {cfg['method']} "
                  f"(alpha {cfg['alpha']}, window {cfg['window']}), hysteresis margin {cfg['margin']}, hold {cfg['hold']}.",
                  "", "| | label changes | labels seen (frames) |", "|---|---|---|",
                  f"| raw top-1 | {sm['raw_top1_changes']} | {sm['raw_label_counts']} |",
                  f"| smoothed | {sm['smoothed_label_changes']} | {sm['smoothed_label_counts']} |", "",
                  _reduction_line(sm)]
    return "\n".join(lines) + "\n"


PROG = "python -m fer_edge.benchmarks.pipeline_bench"


def _main(argv) -> int:
    parser = new_parser(PROG, description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.pipeline:
        parser.error("--pipeline SOURCE is required")
    return run(args)


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
