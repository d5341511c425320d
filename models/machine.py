"""The machine a model was trained or measured on, as lscpu names it.

Lives in the models layer so training (checkpoint "hardware") and the benchmark reports read the CPU the same way.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """CPU model name as lscpu reports it (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
