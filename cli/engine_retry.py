"""fer-export --engine from an INT8 ONNX that TensorRT cannot build: retry with more blocks in float, then FP16.

TensorRT 10.3 (JetPack 6) fails on some Q/DQ graphs that 10.7+ builds. When TensorRT itself rejects the INT8
network (TensorRTBuildFailed; not a bad option or a missing install), the build is retried on INT8 ONNX files
with 1, 2, 4, ... more blocks in float (calibration/float_fallback.py: the gate's sensitivity order), each step
reported. When every retry fails, the FP16 engine is built instead if asked (--int8-fallback-fp16), else the
error says how. A failed build writes nothing; a derived ONNX whose build failed is deleted.

This lives in cli/ because it joins two sibling layers (export builds, calibration re-quantizes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

from fer_edge.calibration.float_fallback import FloatFallback
from fer_edge.export.engine_build import BuiltEngine, TensorRTBuildFailed, build_engine
from fer_edge.models.artifact_writer import artifact_name
from fer_edge.runtime.artifact_io import sidecar_contract

DEFAULT_RETRIES = 3


def retry_schedule(retries: int, available: int) -> List[int]:
    """Blocks to add to float per retry: 1, 2, 4, ... (each build can take minutes on a Jetson), capped at
    `available` and never the same twice."""
    steps: List[int] = []
    extra = 1
    for _ in range(retries):
        step = min(extra, available)
        if step < 1 or (steps and step == steps[-1]):
            break
        steps.append(step)
        extra *= 2
    return steps


def build_with_int8_fallback(onnx_path: Path, retries: int = DEFAULT_RETRIES, fp16_fallback: bool = False,
                             log: Callable[[str], None] = print, build: Callable[..., BuiltEngine] = build_engine,
                             fallback_for: Callable[[Path, Path], FloatFallback] = FloatFallback,
                             **build_kwargs) -> BuiltEngine:
    """build(onnx_path, **build_kwargs); for an INT8 source that TensorRT rejects, the fallback steps above."""
    onnx_path = Path(onnx_path)
    try:
        return build(onnx_path, log=log, **build_kwargs)
    except TensorRTBuildFailed as exc:
        contract = sidecar_contract(onnx_path)
        if contract is None or contract.precision != "int8" or (retries < 1 and not fp16_fallback):
            raise
        first_error = exc
    out_dir = Path(build_kwargs.get("out_dir") or onnx_path.parent)
    plan = fallback_for(onnx_path, out_dir)
    steps: List[Dict[str, object]] = [{"source": onnx_path.name, "blocks_in_float": len(plan.kept),
                                       "error": str(first_error)[:300]}]
    schedule = retry_schedule(retries, len(plan.order))
    log(f"INT8 engine build failed ({str(first_error)[:200]}).")
    if schedule:
        log(f"  retrying with more blocks in float, in {plan.order_source}")
    for extra in schedule:
        derived = plan.write(extra)
        log(f"  retry {len(steps)}/{len(schedule)}: {extra} more block(s) in float "
            f"({', '.join(plan.order[:extra])}) -> {derived.name}")
        history = {"int8_fallback": {"steps": steps + [{"source": derived.name, "blocks_in_float":
                                                        len(plan.kept) + extra, "error": None}]}}
        try:
            built = build(derived, log=log, extra_meta=history, **build_kwargs)
        except TensorRTBuildFailed as exc:
            plan.remove(derived)
            steps.append({"source": derived.name, "blocks_in_float": len(plan.kept) + extra, "error": str(exc)[:300]})
            log(f"  retry {len(steps) - 1} failed too: {str(exc)[:200]}")
            continue
        except BaseException:       # another error or Ctrl-C: no derived ONNX is left behind either
            plan.remove(derived)
            raise
        log(f"  INT8 engine built with {len(plan.kept) + extra} block(s) in float; its source is {derived}")
        return built
    return _fp16_instead(onnx_path, plan, steps, fp16_fallback, log, build, build_kwargs)


def _fp16_instead(onnx_path: Path, plan: FloatFallback, steps: List[Dict[str, object]], fp16_fallback: bool,
                  log, build, build_kwargs) -> BuiltEngine:
    fp16 = onnx_path.parent / artifact_name(plan.contract, "fp16")
    tried = "; ".join(f"{s['source']} ({s['blocks_in_float']} blocks in float)" for s in steps)
    if fp16_fallback and fp16.exists():
        log(f"  every INT8 build failed ({tried}); building the FP16 engine from {fp16} (--int8-fallback-fp16)")
        return build(fp16, log=log, extra_meta={"int8_fallback": {"steps": steps, "gave_up_on_int8": True}},
                     **build_kwargs)
    if not fp16.exists():
        offer = (f"there is no FP16 ONNX {fp16} to fall back to: export it with `fer-export --fp16` (same "
                 "checkpoint and --out), then build its engine with `fer-export --engine --onnx` on it")
    else:
        offer = (f"build the FP16 engine instead: `fer-export --engine --onnx {fp16}`, or add --int8-fallback-fp16 "
                 "to do that automatically")
    raise TensorRTBuildFailed(f"TensorRT could not build the INT8 engine: tried {tried}. Last error: "
                              f"{steps[-1]['error']}. Nothing was written; {offer}")
