"""A robot/kiosk loop: camera -> fer-edge pipeline -> the smoothed emotion per person, within a latency budget.

    python examples/robot_loop.py --model fer-artifacts/model.onnx --detector face_detection_yunet_2023mar.onnx
    python examples/robot_loop.py --source clip.mp4 --budget-ms 50 --frames 200 --model model.onnx --detector yunet.onnx

Only the lean runtime is used (numpy, OpenCV, ONNX Runtime). The camera is read on a background
thread that keeps the newest frame, so a slow frame never makes the robot react to old images.
Each frame must finish within --budget-ms; overruns are counted and reported, and the loop sleeps
off any remaining budget so the robot runs at a steady rate.
"""
from __future__ import annotations

import argparse
import sys
import time

from fer_edge.pipeline import FerPipeline
from fer_edge.pipeline.video_io import open_source
from fer_edge.runtime.errors import FerEdgeError


def react(track_id: int, emotion: str, confidence: float) -> None:
    """Stand-in for the robot's behaviour (speech, face display, ...)."""
    print(f"person {track_id}: {emotion} ({confidence:.0%})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0", help="webcam index, video file or stream URL (default 0)")
    p.add_argument("--model", required=True, help="FER .onnx or .engine")
    p.add_argument("--detector", help="YuNet .onnx (default: OpenCV's Haar cascade)")
    p.add_argument("--budget-ms", type=float, default=100.0, help="time per frame, e.g. 100 for 10 Hz (default 100)")
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (default: run until Ctrl-C)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime (default 2)")
    args = p.parse_args(argv)

    try:
        pipeline = FerPipeline(args.model, detector=args.detector, threads=args.threads)
        source = open_source(args.source)  # cameras/streams: newest frame only, never a backlog; files: every frame
    except (FerEdgeError, ValueError) as exc:
        print(f"robot_loop: {exc}", file=sys.stderr)
        return 1
    shown = {}  # track id -> last emotion reported, so we only speak on changes
    frames = overruns = 0
    try:
        for frame in source:
            start = time.perf_counter()
            for face in pipeline(frame.image):
                if shown.get(face.track_id) != face.smoothed_label:
                    shown[face.track_id] = face.smoothed_label
                    react(face.track_id, face.smoothed_label, face.smoothed_score)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            frames += 1
            if elapsed_ms > args.budget_ms:
                overruns += 1
            else:
                time.sleep((args.budget_ms - elapsed_ms) / 1e3)
            if args.frames and frames >= args.frames:
                break
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
    print(f"{frames} frames, {overruns} over the {args.budget_ms:.0f} ms budget, "
          f"{source.dropped} stale camera frames skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
