"""Jetson clock state for benchmark reports: L4T release, nvpmodel mode and jetson_clocks state.

Jetson iGPUs have no NVML, so gpu_check records these instead of desktop GPU clocks (runtime/tensorrt/gpu_info.py).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional


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
