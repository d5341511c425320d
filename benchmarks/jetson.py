"""Jetson power and clock state for benchmarks: nvpmodel / jetson_clocks state, tegrastats power -> mJ per inference.

    with TegrastatsSampler(interval_ms=100) as power:
        run_inferences(n)
    print(energy_per_inference_mj(power.summary()["VDD_IN"]["mean_mw"], power.wall_s, n))

Rail names differ per module (Orin NX/Nano: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC; AGX Orin: VDD_GPU_SOC,
VDD_CPU_CV, VIN_SYS_5V0, ...), so every "NAME <cur>mW/<avg>mW" pair is parsed generically. Use VDD_IN
(module input) for the total when present. On desktops use NVML instead (runtime/gpu_info.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from fer_edge.runtime.errors import BackendUnavailableError

# JetPack 5/6: "VDD_IN 5012mW/5012mW"; JetPack 4 (Xavier/Nano): "POM_5V_IN 2934/2934".
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}


def parse_tegrastats_line(line: str) -> Dict[str, float]:
    """One tegrastats line -> {rail: instantaneous mW}. RAM/SWAP usage pairs are skipped."""
    return {name: float(cur) for name, cur, _avg in _RAIL.findall(line) if name not in _NOT_RAILS}


def power_summary(lines: Iterable[str]) -> Dict[str, Dict[str, float]]:
    """{rail: {mean_mw, peak_mw, samples}} over tegrastats lines."""
    samples: Dict[str, List[float]] = {}
    for line in lines:
        for rail, mw in parse_tegrastats_line(line).items():
            samples.setdefault(rail, []).append(mw)
    return {rail: {"mean_mw": sum(v) / len(v), "peak_mw": max(v), "samples": len(v)} for rail, v in samples.items()}


def energy_per_inference_mj(mean_mw: float, wall_s: float, inferences: int, idle_mw: float = 0.0) -> float:
    """(mean power - idle baseline) x wall time / inferences, in millijoules."""
    if inferences < 1 or wall_s <= 0:
        raise ValueError("need at least one inference and a positive wall time")
    return (mean_mw - idle_mw) * wall_s / inferences  # mW x s = mJ


class TegrastatsSampler:
    """Runs `tegrastats --interval N` for the duration of a with-block and keeps its lines."""

    def __init__(self, interval_ms: int = 100, executable: Optional[str] = None):
        self.executable = executable or shutil.which("tegrastats")
        if not self.executable:
            raise BackendUnavailableError("tegrastats not found: power sampling works on Jetson (L4T) only; "
                                          "on desktop GPUs the benchmark records NVML clocks instead")
        self.interval_ms = interval_ms
        self.lines: List[str] = []
        self.wall_s = 0.0

    def __enter__(self) -> "TegrastatsSampler":
        self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._start = time.perf_counter()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.lines.append(line.strip())

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._start
        self._proc.terminate()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(timeout=2)

    def summary(self) -> Dict[str, Dict[str, float]]:
        return power_summary(self.lines)


def _run(cmd: List[str]) -> Optional[str]:
    if not shutil.which(cmd[0]):
        return None
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout + result.stderr).strip() or None


def jetson_state() -> Dict[str, Optional[str]]:
    """L4T release, nvpmodel mode and jetson_clocks state, as text; None where not readable (not root, not Jetson)."""
    release = Path("/etc/nv_tegra_release")
    return {
        "l4t": release.read_text().splitlines()[0].strip() if release.exists() else None,
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "jetson_clocks": _run(["jetson_clocks", "--show"]),  # needs root; None otherwise
    }
