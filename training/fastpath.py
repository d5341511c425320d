"""The trainer's fast CPU path, piece by piece, each with a config key to turn it off and a logged fallback.

Measured on a 2-core Xeon (tf_efficientnetv2_b0, 1 channel, 48 px, AdamW, 2 threads;
benchmarks/results/train_speed_cpu.md): NCHW fp32 at batch 64 trains 106 images/s; channels_last + fused AdamW
+ a foreach EMA update 167; the same at batch 128 235; + torch.compile 269 (2.55x). bf16 autocast on a CPU without AMX was slower
(27-134 images/s), so the CPU path stays fp32.
"""
from __future__ import annotations

import shutil
from typing import Any, Dict, List, Optional, Tuple

_reported: set = set()


def report_once(key: str, message: str) -> None:
    """Print a fallback or choice once per process: a silent fallback is a slow run nobody can explain."""
    if key in _reported:
        return
    _reported.add(key)
    print(message, flush=True)


# ------------------------------------------------------------------------------------- memory format
def use_channels_last(setting: Any, device) -> bool:
    """"auto" = on everywhere: oneDNN's CPU convolutions and cuDNN's both run faster in NHWC for this model."""
    return True if setting == "auto" else bool(setting)


def to_channels_last(x, enabled: bool):
    import torch
    return x.contiguous(memory_format=torch.channels_last) if enabled else x


# ---------------------------------------------------------------------------------------- optimizer
def optimizer_impl(requested_fused: bool, device) -> Tuple[Dict[str, bool], str]:
    """AdamW keyword(s) picking the implementation, and a note saying which and why.

    torch's default on CPU is the per-tensor for-loop ("single tensor") AdamW; fused (one kernel over all
    tensors) exists on CPU since torch 2.4. Falls back to foreach where fused is unavailable."""
    if not requested_fused:
        return {}, "torch's default AdamW (fused_optimizer off: for-loop on CPU, foreach on CUDA)"
    reason = fused_unavailable_reason(device)
    if reason is None:
        return {"fused": True}, "fused AdamW"
    report_once(f"fused:{reason}", f"fused AdamW unavailable ({reason}); using foreach AdamW instead")
    return {"foreach": True}, f"foreach AdamW (fused unavailable: {reason})"


def fused_unavailable_reason(device) -> Optional[str]:
    """None when torch.optim.AdamW(fused=True) steps on this device, else why not (probed on one tensor)."""
    import torch
    try:
        p = torch.nn.Parameter(torch.zeros(2, device=device))
        p.grad = torch.zeros(2, device=device)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
    except (RuntimeError, TypeError, ValueError) as exc:
        return f"torch {torch.__version__} on {device.type}: {str(exc).splitlines()[0]}"
    return None


def new_adamw(param_groups: List[Dict[str, Any]], lr: float, fused: bool, device):
    """(AdamW, note) with the fastest implementation allowed by the config and this torch/device."""
    import torch
    kwargs, note = optimizer_impl(fused, device)
    return torch.optim.AdamW(param_groups, lr=lr, **kwargs), note


# ------------------------------------------------------------------------------------------ compile
def compile_unavailable_reason(device) -> Optional[str]:
    """None when torch.compile (inductor) can be tried here, else why not. Inductor's CPU backend writes C++
    and needs a compiler on PATH."""
    import torch
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        return "no C/C++ compiler on PATH (inductor's CPU backend needs one): install gcc or set compile=false"
    return None


# Compiling tf_efficientnetv2_b0's training step took 75-100 s on the 2-core Xeon (cold cache) and saved 0.07 s
# per batch-128 step (0.545 -> 0.476 s, train_speed_cpu.md), so it pays back after ~1100-1450 steps; "auto"
# compiles runs of 1500+ steps (the CPU recipe: 18 epochs x 224 steps).
COMPILE_MIN_STEPS = 1500


def want_compile(setting: Any, total_steps: int) -> bool:
    """true/false as set; "auto": only when the run is long enough to earn back the compilation time."""
    if setting != "auto":
        return bool(setting)
    if total_steps < COMPILE_MIN_STEPS:
        report_once("compile-auto-short", f"compile=auto: not compiling a {total_steps}-step run (compilation "
                    f"takes ~100 s on 2 cores and pays back after ~1450 steps; compiles from {COMPILE_MIN_STEPS})")
        return False
    return True


def compile_model(model, enabled: bool, device):
    """(forward module, note): torch.compile(model) when enabled and it works here, else the model itself.

    The compiled module shares the model's parameters; state_dict, EMA and checkpoints keep using `model`
    (a compiled module would prefix every key with `_orig_mod.`). Compilation itself happens on the first
    forward: about 100 s on the 2-core Xeon, so short runs may not earn it back."""
    import torch
    if not enabled:
        return model, "eager (compile off)"
    reason = compile_unavailable_reason(device)
    if reason is None:
        try:
            return torch.compile(model), "torch.compile (inductor)"
        except Exception as exc:  # any compiler failure: train uncompiled rather than not at all
            reason = f"torch.compile raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    report_once(f"compile:{reason}", f"torch.compile unavailable ({reason}); training uncompiled (eager)")
    return model, f"eager (compile unavailable: {reason})"


def first_step_or_eager(forward, model, xb):
    """Run the first forward; if compilation fails there (inductor compiles lazily), report once and return the
    eager model for this and all later steps. Returns (forward, logits)."""
    if forward is model:
        return forward, forward(xb)
    try:
        return forward, forward(xb)
    except Exception as exc:  # compilation errors surface on first call, with many exception types
        first = str(exc).splitlines()[0] if str(exc) else ""
        report_once(f"compile-run:{type(exc).__name__}",
                    f"torch.compile failed on the first step ({type(exc).__name__}: {first}); "
                    "training uncompiled (eager); set compile=false to skip the attempt")
        return model, model(xb)


# --------------------------------------------------------------------------------------- batch + lr
def effective_lr(cfg: Dict[str, Any]) -> float:
    """cfg lr is the rate at cfg lr_reference_batch; scale linearly to the batch used (0 = use lr as is)."""
    ref = int(cfg.get("lr_reference_batch", 0) or 0)
    lr = float(cfg["lr"])
    return lr * int(cfg["batch_size"]) / ref if ref else lr


def param_groups(model, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on matrices and convolutions, none on biases and norms."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

