"""The benchmark report: environment facts, the Markdown comparison table, report.json and report.csv."""
from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import io
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fer_edge.benchmarks.latency import SUMMARY_KEYS
from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json
from fer_edge.models.machine import cpu_model


def gpu_description() -> str:
    """`nvidia-smi` name, driver and memory of each GPU, or 'none'."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "none (nvidia-smi failed)"
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return "; ".join(lines) if out.returncode == 0 and lines else "none"


def package_version(name: str) -> Optional[str]:
    """Installed version without importing the package (torch takes seconds to import); None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> Optional[List[float]]:
    """1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def available_cores() -> int:
    """Cores this process may run on (taskset / cgroup affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_machine_warning(load_samples: Dict[str, Optional[Sequence[float]]], cores: int) -> Optional[str]:
    """A warning when a 1-minute load average exceeds the available cores, i.e. runnable threads waited for a CPU.

    load_samples: when -> [1, 5, 15 min] (e.g. {"before timing": [...], "after timing": [...]}). A load above
    the core count means other work competed with the timed calls: on a 2-core host at load 3-9, one run
    measured FP32 p50 11.86 ms and the next 2.03 ms.
    """
    taken = {when: sample for when, sample in load_samples.items() if sample}
    if not taken:
        return ("the load average could not be read on this OS, so fer-edge cannot tell whether other work "
                "competed with the timing; compare only numbers from one interleaved run")
    if not any(sample[0] > cores for sample in taken.values()):
        return None
    seen = ", ".join(f"{sample[0]:.2f} {when}" for when, sample in taken.items())
    return (f"the machine was busy: 1-minute load average {seen} on {cores} available core(s) (above {cores}, other "
            "work competed for the CPU); latencies are inflated and noisy, and ratios between models unreliable. "
            "Rerun on an idle machine (check `uptime`) before quoting these numbers")


def ordering_warnings(models: Sequence[Dict]) -> List[str]:
    """Impossible orderings: end_to_end includes inference and every backend stage, so none may have a higher median."""
    notes = []
    for entry in models:
        for batch, stages in entry.get("latency", {}).items():
            e2e = stages.get("end_to_end")
            if e2e is None:
                continue
            for stage, stats in stages.items():
                if stage != "end_to_end" and stats["median"] > e2e["median"]:
                    notes.append(f"{Path(entry['path']).name} batch {batch}: {stage} p50 {stats['median']:.2f} ms is "
                                 f"above end_to_end p50 {e2e['median']:.2f} ms, which includes it: noise outweighs the "
                                 "difference; rerun on an idle machine or time longer (--duration, --iterations)")
    return notes


def timing_warnings(load_samples: Dict[str, Optional[Sequence[float]]], cores: int, models: Sequence[Dict]) -> List[str]:
    """Every reason not to trust a run's latencies: a busy machine, then impossible orderings of the stats."""
    busy = busy_machine_warning(load_samples, cores)
    return ([busy] if busy else []) + ordering_warnings(models)


def warning_lines(warnings: Sequence[str]) -> str:
    return "\n".join(f"WARNING: {w}" for w in warnings)


# Libraries whose versions every result header lists, in this order, when installed.
VERSIONED_LIBRARIES = ("python", "numpy", "onnxruntime", "openvino", "opencv", "onnx", "torch", "tensorrt",
                       "tensorrt_rtx")
# tensorrt-rtx installs under a CUDA-specific distribution name (tensorrt_rtx_cu12 on CUDA 12).
TENSORRT_RTX_DISTRIBUTIONS = ("tensorrt-rtx", "tensorrt_rtx_cu12")


def tensorrt_rtx_version() -> Optional[str]:
    return next((v for v in map(package_version, TENSORRT_RTX_DISTRIBUTIONS) if v), None)


def environment(command: str) -> Dict[str, object]:
    """The one description of where a result was measured: command, machine, date, load and library versions."""
    import cv2
    import numpy
    import onnxruntime
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
           "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__, "openvino": package_version("openvino"),
           "opencv": cv2.__version__,
           "onnx": package_version("onnx"), "torch": package_version("torch"), "tensorrt": package_version("tensorrt"),
           "tensorrt_rtx": tensorrt_rtx_version(), "gpu": gpu_description(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
           "cores_available": available_cores()}
    load = load_average()
    if load is not None:
        env["load_average"] = load
    return env


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(models: Sequence[Dict], batches: Sequence[int]) -> str:
    """One row per model: identity, accuracy, then p50/p99 end-to-end and inference ms and throughput per batch."""
    head = ["Model", "Precision", "Backend", "Size (MB)", "Top-1", "Macro-F1", "Agreement"]
    for b in batches:
        head += [f"e2e p50/p99 ms (b{b})", f"infer p50/p99 ms (b{b})", f"e2e img/s (b{b})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for entry in models:
        acc = entry.get("accuracy") or {}
        row = [Path(entry["path"]).name, entry["precision_label"],
               entry["backend"] + (" (zero-copy I/O)" if entry.get("bench_settings", {}).get("zero_copy") else ""),
               _fmt(entry["size_mb"]),
               _fmt(acc.get("top1"), 4), _fmt(acc.get("macro_f1"), 4), _fmt(entry.get("agreement_with_reference"), 4)]
        for b in batches:
            lat = entry["latency"].get(str(b), {})
            e2e, inf = lat.get("end_to_end"), lat.get("inference")
            row += [f"{e2e['median']:.2f} / {e2e['p99']:.2f}" if e2e else "-",
                    f"{inf['median']:.2f} / {inf['p99']:.2f}" if inf else "-",
                    f"{e2e['throughput_ips']:.0f}" if e2e else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def csv_text(models: Sequence[Dict], warnings: Sequence[str] = ()) -> str:
    """One row per (model, batch, stage) with every statistic, the model's accuracy columns and the run's warnings."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "precision", "precision_label", "backend", "size_mb", "top1", "macro_f1",
                     "agreement_with_reference",
                     "batch", "stage", *SUMMARY_KEYS, "warnings"])
    run_warnings = " | ".join(warnings)
    for entry in models:
        acc = entry.get("accuracy") or {}
        ident = [entry["path"], entry["precision"], entry["precision_label"],
                 entry["backend"], f"{entry['size_mb']:.3f}",
                 _fmt(acc.get("top1"), 6), _fmt(acc.get("macro_f1"), 6), _fmt(entry.get("agreement_with_reference"), 6)]
        for batch, stages in entry["latency"].items():
            for stage, stats in stages.items():
                writer.writerow([*ident, batch, stage, *(_fmt(stats[k], 4) for k in SUMMARY_KEYS), run_warnings])
    return buffer.getvalue()


def write_report(folder: os.PathLike, report: Dict) -> List[Path]:
    """report.json and report.csv in `folder` (atomic writes); returns the paths written."""
    folder = Path(folder)
    json_path = atomic_write_json(folder / "report.json", report)
    csv_path = atomic_write_bytes(folder / "report.csv", csv_text(report["models"], report.get("warnings", ())).encode())
    return [json_path, csv_path]


def environment_markdown(env: Dict[str, object]) -> str:
    """The header every committed result carries: command, machine, date and library versions."""
    versions = ", ".join(f"{k} {env[k]}" for k in VERSIONED_LIBRARIES if env.get(k))
    lines = [f"- Command: `{env['command']}`", f"- Machine: {env['cpu']}, {env['cores']} cores, {env['os']}; GPU: {env['gpu']}",
             f"- Date (UTC): {env['date']}", f"- Versions: {versions}"]
    if env.get("load_average_at_start"):
        lines.append(f"- Load average at the start (1/5/15 min): {env['load_average_at_start']}")
    if env.get("load_average"):
        lines.append(f"- Load average at the end (1/5/15 min): {env['load_average']}")
    cores = env.get("cores_available") or env.get("cores")
    busy = busy_machine_warning({"at the end": env.get("load_average")}, int(cores)) if cores else None
    if busy:
        lines.append(f"- **WARNING:** {busy}")
    return "\n".join(lines)


def add_timing_arguments(parser, warmup: int, iterations: int, batch: str = "1,32", threads: int = 2) -> None:
    """The options every side-by-side latency script shares."""
    parser.add_argument("--batch", default=batch, help=f"batch sizes (default {batch})")
    parser.add_argument("--threads", type=int, default=threads, help=f"threads per runtime (default {threads})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})")
    parser.add_argument("--iterations", type=int, default=iterations, help=f"timed rounds per configuration (default {iterations})")
    parser.add_argument("--out", metavar="STEM", help="also write STEM.md and STEM.json")
    parser.add_argument("--no-progress", action="store_true")


def publish_result(title: str, env: Dict[str, object], method: str, table: str, verdict: str, rows, out) -> str:
    """Print a committed-result page (title, environment, method, table, verdict); write STEM.md/.json with --out."""
    text = "\n\n".join([f"# {title}", environment_markdown(env), method, table, "**Verdict:** " + verdict])
    print(text)
    if out:
        atomic_write_bytes(Path(out + ".md"), (text + "\n").encode())
        atomic_write_json(Path(out + ".json"), {"env": env, "rows": rows, "verdict": verdict})
    return text
