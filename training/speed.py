"""`fer-train speed`: training images/s of the old and the fast CPU path side by side in one run, and the check
that the fast path learns the same loss curve as the old one.

Configurations are timed round-robin (one block of steps per configuration in turn, several rounds), so a load
change on the machine hits every row alike. Each configuration runs warm-up steps first (torch.compile compiles
there: ~100 s on a 2-core Xeon) and those are not timed. Inputs are synthetic 48 px batches: the step is the
trainer's own TrainStep (forward, label-smoothed CE, backward, clip, AdamW, EMA); augmentation is left out
(<1% of a step, measured in the issue).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from fer_edge.data.paths import REPO_ROOT
from fer_edge.training.fastpath import compile_model, compile_unavailable_reason, new_adamw, param_groups

RESULTS_PREFIX = REPO_ROOT / "benchmarks" / "results" / "train_speed_cpu"
# The recipe's regularisers, so the timed model is the trained one.
RECIPE = {"drop_rate": 0.2, "drop_path_rate": 0.05, "label_smoothing": 0.1, "grad_clip": 5.0, "lr": 0.002,
          "weight_decay": 0.05, "ema_decay": 0.998}


@dataclass(frozen=True)
class SpeedConfig:
    name: str
    batch: int
    channels_last: bool
    fused_optimizer: bool
    foreach_ema: bool
    compile: bool


BASELINE = SpeedConfig("baseline (NCHW, batch 64, plain AdamW, loop EMA)", 64, False, False, False, False)
FAST_64 = SpeedConfig("channels_last+fused+foreach EMA, batch 64", 64, True, True, True, False)
FAST_128 = SpeedConfig("channels_last+fused+foreach EMA, batch 128", 128, True, True, True, False)
COMPILED_128 = SpeedConfig("channels_last+fused+foreach EMA+compile, batch 128", 128, True, True, True, True)
DEFAULT_CONFIGS = (BASELINE, FAST_64, FAST_128, COMPILED_128)


def build_step(config: SpeedConfig, arch: str = "tf_efficientnetv2_b0", seed: int = 0, lr: Optional[float] = None):
    """(TrainStep, notes) for one configuration, from a fresh seeded model with the recipe's regularisers."""
    import torch
    from fer_edge.training.ema import ModelEma
    from fer_edge.training.train import TrainStep, new_training_model
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = new_training_model(arch, 7, 1, RECIPE["drop_rate"], RECIPE["drop_path_rate"], True).train()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, RECIPE["ema_decay"], foreach=config.foreach_ema)
    optimizer, opt_note = new_adamw(param_groups(model, RECIPE["weight_decay"]), lr or RECIPE["lr"],
                                    config.fused_optimizer, device)
    forward, compile_note = compile_model(model, config.compile, device)
    step = TrainStep(model, forward, optimizer, ema, None, None, RECIPE["label_smoothing"], RECIPE["grad_clip"])
    return step, f"{opt_note}; {compile_note}"


def synthetic_batch(batch: int, size: int, channels_last: bool, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size, size, generator=g) * 2 - 1
    y = torch.randint(0, 7, (batch,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def run_block(step, x, y, n: int) -> float:
    """Seconds for n training steps."""
    t = time.perf_counter()
    for _ in range(n):
        step(x, y)
    return time.perf_counter() - t


def measure(configs=DEFAULT_CONFIGS, size: int = 48, block: int = 5, rounds: int = 5, warmup: int = 3,
            threads: int = 2, arch: str = "tf_efficientnetv2_b0") -> List[Dict[str, Any]]:
    """Round-robin images/s per configuration; warm-up steps (compilation included) are not timed."""
    import torch
    torch.set_num_threads(threads)
    configs, skipped = runnable(configs)
    runners = []
    for c in configs:
        step, notes = build_step(c, arch)
        x, y = synthetic_batch(c.batch, size, c.channels_last, seed=1)
        t = time.perf_counter()
        run_block(step, x, y, warmup)
        print(f"warm-up {c.name}: {warmup} steps in {time.perf_counter() - t:.1f}s (not timed; {notes})", flush=True)
        runners.append({"config": c, "step": step, "x": x, "y": y, "notes": notes, "warmup_s": time.perf_counter() - t,
                        "block_s": []})
    for r in range(rounds):
        for run in runners:
            run["block_s"].append(run_block(run["step"], run["x"], run["y"], block))
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{run['config'].batch * block / run['block_s'][-1]:.0f}" for run in runners) + " images/s", flush=True)
    rows = [speed_row(run, block) for run in runners]
    base = rows[0]["images_per_s"] if rows and rows[0]["name"] == BASELINE.name else None
    for row in rows:
        row["vs_baseline"] = round(row["images_per_s"] / base, 2) if base else None
    return rows + [{"name": c.name, **asdict(c), "skipped": reason} for c, reason in skipped]


def runnable(configs):
    """(configurations to run, [(configuration, reason)] skipped): compile rows need a working inductor."""
    import torch
    reason = compile_unavailable_reason(torch.device("cpu"))
    if reason is None:
        return list(configs), []
    return [c for c in configs if not c.compile], [(c, reason) for c in configs if c.compile]


def speed_row(run: Dict[str, Any], block: int) -> Dict[str, Any]:
    c = run["config"]
    total = float(sum(run["block_s"]))
    per_block = [c.batch * block / s for s in run["block_s"]]
    return {"name": c.name, **asdict(c), "images_per_s": round(c.batch * block * len(per_block) / total, 1),
            "images_per_s_min": round(min(per_block), 1), "images_per_s_max": round(max(per_block), 1),
            "step_s": round(total / (block * len(per_block)), 4), "timed_steps": block * len(per_block),
            "warmup_s": round(run["warmup_s"], 1), "implementation": run["notes"]}


def format_table(rows: List[Dict[str, Any]]) -> List[str]:
    lines = ["| configuration | images/s | min-max over blocks | s/step | vs baseline | warm-up s (untimed) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "-"
        lines.append(f"| {r['name']} | {r['images_per_s']:.1f} | {r['images_per_s_min']:.0f}-"
                     f"{r['images_per_s_max']:.0f} | {r['step_s']:.3f} | {ratio} | {r['warmup_s']:.1f} |")
    return lines


# --------------------------------------------------------------------------------------- loss check
def loss_curve(config: SpeedConfig, batches, lr: float, seed: int = 0) -> List[float]:
    """Per-step training loss of one configuration over the given batch makers, from seed."""
    import torch
    step, notes = build_step(config, seed=seed, lr=lr)
    print(f"loss check {config.name}: {notes}", flush=True)
    losses = []
    t = time.perf_counter()
    for i, make in enumerate(batches):
        x, y = make()
        torch.manual_seed(seed * 100003 + i)  # same dropout/drop-path draws per step for eager configurations
        losses.append(float(step(x.contiguous(memory_format=torch.channels_last) if config.channels_last else x,
                                 y)[1].detach()))
    print(f"loss check {config.name}: {len(losses)} steps in {time.perf_counter() - t:.0f}s", flush=True)
    return losses


def window_means(values: List[float], window: int) -> np.ndarray:
    n = len(values) // window
    return np.asarray(values[:n * window], dtype=np.float64).reshape(n, window).mean(1)


def compare_curves(a: List[float], b: List[float], window: int = 50, tolerance: float = 0.05) -> Dict[str, Any]:
    """Max/mean |difference| of the two loss curves' window means; passes when the max is within tolerance."""
    wa, wb = window_means(a, window), window_means(b, window)
    diff = np.abs(wa - wb)
    raw = np.abs(np.asarray(a) - np.asarray(b))
    return {"window": window, "tolerance": tolerance, "windows": len(diff),
            "max_abs_diff_windowed": round(float(diff.max()), 4), "mean_abs_diff_windowed": round(float(diff.mean()), 4),
            "max_abs_diff_per_step": round(float(raw.max()), 4), "mean_abs_diff_per_step": round(float(raw.mean()), 4),
            "baseline_windows": [round(float(v), 4) for v in wa], "fast_windows": [round(float(v), 4) for v in wb],
            "passed": bool(diff.max() <= tolerance)}


def loss_check_batches(steps: int, batch: int, size: int, data_dir: Optional[str], seed: int = 0):
    """(batch makers, description): the same augmented batches for every configuration. Real FER-2013 training
    faces with the CPU recipe's augmentation when the npz files are there, else synthetic learnable squares."""
    import torch
    from fer_edge.training.augment import AugmentConfig, augment_batch
    from fer_edge.training.data import DEFAULT_DATA_DIR, load_split, make_contract, prepare_tensor
    from fer_edge.training.train import DEFAULTS
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    if (data_dir / "fer2013_train_1of2.npz").is_file():
        split = load_split(str(data_dir), "train")
        contract = make_contract(DEFAULTS["arch"], DEFAULTS["labels"], size)
        x_all, y_all = prepare_tensor(split.x, contract), torch.as_tensor(split.y, dtype=torch.long)
        source = f"FER-2013 Training ({len(split)} faces in {data_dir}), CPU recipe augmentation"
    else:
        x_all, y_all = learnable_squares(4096, size, seed)
        source = "synthetic learnable squares (FER-2013 npz not found)"
    aug = AugmentConfig.from_dict(DEFAULTS["augment"])

    def maker(i: int):
        def make():
            torch.manual_seed(seed * 7919 + i)
            idx = torch.randint(0, x_all.shape[0], (batch,))
            return augment_batch(x_all[idx], aug, (-1.0, 1.0)), y_all[idx]
        return make
    return [maker(i) for i in range(steps)], source


def learnable_squares(n: int, size: int, seed: int):
    """Noise with a bright square whose grid position is the class: a curve that actually falls."""
    import torch
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 7, (n,), generator=g)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5 - 1
    cell = size // 3
    for c in range(7):
        r, col = divmod(c, 3)
        x[y == c, :, r * cell + 1:(r + 1) * cell - 1, col * cell + 1:(col + 1) * cell - 1] = 0.8
    return x, y


# The fast path draws its own random numbers (compiled dropout), so it is in effect another seed: its distance to
# the baseline is a draw from the same spread as the seed-1 run's, and a 1x limit would fail about as often as it
# passes when the numerics agree. First measured: fast 0.039 vs seed spread 0.038 (300 steps, window 50).
NOISE_FACTOR = 2.0


def loss_check(steps: int = 300, batch: int = 64, size: int = 48, threads: int = 2, window: int = 50,
               tolerance: Optional[float] = None, data_dir: Optional[str] = None,
               compile: bool = True) -> Dict[str, Any]:
    """Baseline vs the fast path (channels_last, fused AdamW, foreach EMA, compile unless off or unavailable) at
    the same batch and lr, from the same seed, on the same batches: the optimisation must be the same, only
    faster. Batch size is held equal on purpose; batch 128 with scaled lr is a recipe change, not numerics.

    tolerance None: measured. The baseline runs a second time from another seed (other initial weights and
    dropout draws, the same batches); the fast path passes when it is within NOISE_FACTOR times that seed-to-seed
    spread of the baseline, i.e. its numerics differ by no more than run-to-run noise does."""
    import torch
    torch.set_num_threads(threads)
    fast = SpeedConfig(f"channels_last+fused+foreach EMA{'+compile' if compile else ''}, batch {batch}", batch,
                       True, True, True, compile)
    (fast,), skipped = runnable([fast]) if compile else ((fast,), [])
    if skipped:
        fast = SpeedConfig(fast.name.replace("+compile", ""), batch, True, True, True, False)
    base = SpeedConfig(f"baseline (NCHW, batch {batch}, plain AdamW, loop EMA)", batch, False, False, False, False)
    batches, source = loss_check_batches(steps, batch, size, data_dir)
    a = loss_curve(base, batches, RECIPE["lr"])
    b = loss_curve(fast, batches, RECIPE["lr"])
    noise = None
    if tolerance is None:
        noise = compare_curves(a, loss_curve(base, batches, RECIPE["lr"], seed=1), window, 0.0)
        tolerance = round(NOISE_FACTOR * noise["max_abs_diff_windowed"], 4)
    result = {"steps": steps, "batch": batch, "img_size": size, "lr": RECIPE["lr"], "data": source,
              "baseline": base.name, "fast": fast.name, **compare_curves(a, b, window, tolerance),
              "tolerance_source": "given" if noise is None else
              f"measured: {NOISE_FACTOR:g}x the baseline's own max difference from seed 1"}
    if noise is not None:
        result["seed1_windows"] = noise["fast_windows"]
        result["seed_spread"] = noise["max_abs_diff_windowed"]
    if skipped:
        result["compile_skipped"] = skipped[0][1]
    return result


# ------------------------------------------------------------------------------------------ reports
def machine_info(threads: int) -> Dict[str, Any]:
    import torch
    from fer_edge.models.machine import cpu_model
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def write_results(result: Dict[str, Any], prefix=RESULTS_PREFIX) -> Path:
    """prefix.json (merged with what is there, so speed and loss check can run separately) and prefix.md."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    path = prefix.with_suffix(".json")
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(result)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    prefix.with_suffix(".md").write_text("\n".join(markdown(merged)) + "\n")
    return path


def markdown(res: Dict[str, Any]) -> List[str]:
    lines = ["# fer-train: training speed on the CPU, old path vs fast path", ""]
    if "speed" in res:
        s = res["speed"]
        m = s["machine"]
        lines += [f"`{s['command']}` on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['torch_threads']} "
                  f"threads, avx512_bf16 {m['avx512_bf16']}, AMX {m['amx']}), {m['date']}, load average before "
                  f"the run {m['load_average']}.", "",
                  f"tf_efficientnetv2_b0, 1 channel, 7 classes, {s['img_size']} px synthetic inputs, fp32, the "
                  "trainer's own step (forward, label-smoothed CE, backward, grad clip, AdamW, EMA); augmentation "
                  "left out (<1% of a step). Round-robin: "
                  f"{s['rounds']} rounds of {s['block']} steps per configuration, so load changes hit all rows "
                  f"alike; {s['warmup']} warm-up steps per configuration first, not timed (torch.compile "
                  "compiles there).", ""]
        lines += format_table(s["rows"]) + [""]
        lines += [f"- {r['name']}: {r['implementation']}" for r in s["rows"] if not r.get("skipped")] + [""]
    if "loss_check" in res:
        c = res["loss_check"]
        verdict = "PASS" if c["passed"] else "FAIL"
        lines += ["## Loss curves: old path vs fast path, same seed, same batches", "",
                  f"`{c['command']}`: {c['steps']} steps at batch {c['batch']}, lr {c['lr']}, {c['img_size']} px, "
                  f"{c['data']}. {c['baseline']} vs {c['fast']}. Not bit-identical (other kernels, other summation "
                  f"order{', and compiled dropout draws its own random numbers' if 'compile' in c['fast'] else ''}"
                  f"), so the curves are compared as means over windows of {c['window']} steps.", "",
                  f"**{verdict}**: max |difference| of window means {c['max_abs_diff_windowed']} (tolerance "
                  f"{c['tolerance']}, {c.get('tolerance_source', 'given')}), mean {c['mean_abs_diff_windowed']}; "
                  f"per step max {c['max_abs_diff_per_step']}, mean {c['mean_abs_diff_per_step']}.", ""]
        if c.get("verdict_note"):
            lines += [c["verdict_note"], ""]
        seed1 = c.get("seed1_windows")
        lines += ["| steps | baseline loss | fast loss |" + (" baseline, seed 1 |" if seed1 else ""),
                  "| --- | ---: | ---: |" + (" ---: |" if seed1 else "")]
        w = c["window"]
        lines += [f"| {i * w + 1}-{(i + 1) * w} | {a:.4f} | {b:.4f} |" + (f" {seed1[i]:.4f} |" if seed1 else "")
                  for i, (a, b) in enumerate(zip(c["baseline_windows"], c["fast_windows"]))]
    return lines
