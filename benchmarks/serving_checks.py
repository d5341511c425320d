"""A loaded model under the call patterns a robot makes, checked against ONNX Runtime face by face: batch sizes
that change from call to call (1, 2, 1, 3, 1 faces per frame: with CUDA graphs, each shape's graph must be the
one replayed) and calls from 8 threads at once.

The faces are ones ONNX Runtime classifies with a clear margin, and consecutive calls get faces of different
classes, so an output that belongs to another call (a stale graph replay, a buffer another thread overwrote)
changes the top-1 class and fails; kernel rounding between precisions does not.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Sequence

import numpy as np

from fer_edge.runtime.errors import DataError

SEQUENCE = (1, 2, 1, 3, 1)
THREADS = 8
CALLS_PER_THREAD = 12
MIN_MARGIN = 0.3   # top-1 minus top-2 probability under ONNX Runtime


def confident_order(reference: np.ndarray, needed: int, min_margin: float = MIN_MARGIN) -> List[int]:
    """Indices of faces ONNX Runtime classifies with at least `min_margin`, interleaved by class so neighbours
    differ in class (as far as the classes allow)."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    confident = np.flatnonzero(top2[:, 1] - top2[:, 0] >= min_margin)
    classes = reference.argmax(1)
    by_class = [list(confident[classes[confident] == c]) for c in np.unique(classes[confident])]
    if len(by_class) < 2 or len(confident) < needed:
        raise DataError(f"the check needs {needed} faces of at least 2 classes that ONNX Runtime classifies with a "
                        f"margin >= {min_margin}; found {len(confident)} in {len(by_class)} class(es): pass more or "
                        "more varied faces (--data, --count)")
    order = []
    while any(by_class):
        order += [group.pop(0) for group in by_class if group]
    return [int(i) for i in order]


def _compare(got: np.ndarray, want: np.ndarray) -> Dict[str, object]:
    if got.shape != want.shape:
        return {"top1_match": False, "max_abs_prob_diff": None, "error": f"output shape {got.shape}, want {want.shape}"}
    return {"top1_match": bool((got.argmax(1) == want.argmax(1)).all()),
            "max_abs_prob_diff": float(np.abs(got - want).max())}


def batch_sequence_check(predict: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, reference: np.ndarray,
                         sizes: Sequence[int] = SEQUENCE) -> Dict[str, object]:
    """predict (faces -> probabilities) on batches of `sizes` in turn, each row against ONNX Runtime's. Each row's
    face differs in class from that row in the previous call and in every earlier call of the same batch size, so
    a replayed stale graph or a leftover buffer shows up as a wrong class."""
    pool = confident_order(reference, sum(sizes))
    classes = reference.argmax(1)
    used, plan = set(), []
    for n in sizes:
        earlier = [idx for idx in plan if len(idx) == n] + plan[-1:]
        avoid = [{classes[idx[r]] for idx in earlier if r < len(idx)} for r in range(n)]
        idx = []
        for row in range(n):
            pick = next((i for i in pool if i not in used and classes[i] not in avoid[row]), None)
            if pick is None:
                raise DataError(f"not enough confidently classified faces of varied classes for batch sizes "
                                f"{list(sizes)}; pass more faces (--data, --count)")
            used.add(pick)
            idx.append(pick)
        plan.append(idx)
    steps = [{"batch": len(idx), "faces": idx, **_compare(predict(faces[idx]), reference[idx])} for idx in plan]
    return {"sizes": list(sizes), "steps": steps, "passed": all(s["top1_match"] for s in steps)}


def threaded_check(predict: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, reference: np.ndarray,
                   threads: int = THREADS, calls: int = CALLS_PER_THREAD) -> Dict[str, object]:
    """`threads` threads call predict at once (batch sizes 1-3, different faces per thread); every row is checked."""
    order = confident_order(reference, 3 * threads)
    mismatches: List[Dict[str, object]] = []
    errors: List[str] = []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for k in range(calls):
                n = 1 + (t + k) % 3
                idx = [order[(3 * t + k + j) % len(order)] for j in range(n)]
                result = _compare(predict(faces[idx]), reference[idx])
                if not result["top1_match"]:
                    with lock:
                        mismatches.append({"thread": t, "call": k, "faces": idx, **result})
        except Exception as exc:  # every failure is reported, none may pass as a silent thread death
            with lock:
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"threads": threads, "calls_per_thread": calls, "mismatches": mismatches[:10],
            "mismatched_calls": len(mismatches), "errors": errors, "passed": not mismatches and not errors}
