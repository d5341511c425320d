"""Build progress: TensorRT's IProgressMonitor when asked for, else an elapsed-time line every few seconds.

The monitor is opt-in (BuildOptions.progress, fer-export --build-progress; by default only on an interactive
terminal): its Python callbacks run on the builder's threads, which lengthens builds and was reported to give
slower engines (pytorch/TensorRT#3215). The ticker costs nothing and works on every TensorRT.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Dict, Optional


def wants_monitor(progress: Optional[bool], stream=None) -> bool:
    """progress True/False as given; None: only when `stream` (stdout) is an interactive terminal."""
    if progress is not None:
        return progress
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def make_progress_monitor(trt, log: Callable[[str], None]):
    """trt.IProgressMonitor printing top-level phases with elapsed time; None when the API lacks it (8.6)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.start = time.perf_counter()
            self.depth: Dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            if self.depth[phase_name] <= 1:
                log(f"  [{time.perf_counter() - self.start:6.1f}s] {'  ' * self.depth[phase_name]}{phase_name}")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)
    return Monitor()


class Ticker:
    """Elapsed-time line every `every_s` seconds while the builder runs (no TensorRT callbacks)."""

    def __init__(self, log: Callable[[str], None], every_s: float = 10.0):
        self.log, self.every_s, self._stop = log, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = time.perf_counter()
        while not self._stop.wait(self.every_s):
            self.log(f"  still building... {time.perf_counter() - start:.0f}s")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_progress(monitor, log: Callable[[str], None]):
    """The context the build runs in: nothing extra with a monitor (it reports), else the ticker."""
    return contextlib.nullcontext() if monitor is not None else Ticker(log)
