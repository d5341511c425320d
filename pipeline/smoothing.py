"""Per-track smoothing of class probabilities, with hysteresis on label changes.

A single-frame classifier flickers between close classes (neutral/sad, fear/surprise). Per track:
- "ema":    s_t = alpha * p_t + (1 - alpha) * s_{t-1}   (default, alpha 0.3)
- "window": vote over the top-1 labels of the last `window` frames; the smoothed vector holds the
            vote fractions
- "none":   pass-through (still with hysteresis if margin/hold are set)
Hysteresis: the shown label only changes when another class leads the current one by `margin`
for `hold` consecutive frames.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterable, Optional, Tuple

import numpy as np

SMOOTHING_METHODS = ("ema", "window", "none")


@dataclass
class SmoothingConfig:
    method: str = "ema"
    alpha: float = 0.3
    window: int = 8
    margin: float = 0.1
    hold: int = 2

    def validate(self) -> "SmoothingConfig":
        if self.method not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing method {self.method!r} is unknown; choose one of {SMOOTHING_METHODS}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1] (1 = no smoothing), got {self.alpha}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"hysteresis margin must be in [0, 1), got {self.margin}")
        if self.hold < 1:
            raise ValueError(f"hold must be >= 1 frame, got {self.hold}")
        return self


@dataclass
class _TrackState:
    smoothed: Optional[np.ndarray] = None
    votes: Deque[int] = field(default_factory=deque)
    label: Optional[int] = None
    pending: Optional[int] = None
    pending_count: int = 0


class Smoother:
    """update(track_id, probabilities) -> (smoothed probabilities, smoothed label index)."""

    def __init__(self, config: Optional[SmoothingConfig] = None, **overrides):
        config = config or SmoothingConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"unknown smoothing option {key!r}; options: method, alpha, window, margin, hold")
            setattr(config, key, value)
        self.config = config.validate()
        self.states: Dict[int, _TrackState] = {}

    def reset(self) -> None:
        self.states.clear()

    def retain(self, track_ids: Iterable[int]) -> None:
        """Forget tracks that no longer exist (call with the tracker's live ids)."""
        keep = set(track_ids)
        for tid in [t for t in self.states if t not in keep]:
            del self.states[tid]

    def _smooth(self, state: _TrackState, probs: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.method == "ema":
            if state.smoothed is None:
                state.smoothed = probs.copy()
            else:
                state.smoothed = cfg.alpha * probs + (1.0 - cfg.alpha) * state.smoothed
            return state.smoothed
        if cfg.method == "window":
            if state.votes.maxlen != cfg.window:
                state.votes = deque(state.votes, maxlen=cfg.window)
            state.votes.append(int(np.argmax(probs)))
            counts = np.bincount(np.fromiter(state.votes, dtype=np.int64), minlength=probs.size)
            return (counts / len(state.votes)).astype(np.float32)
        return probs

    def _hysteresis(self, state: _TrackState, smoothed: np.ndarray) -> int:
        cfg = self.config
        best = int(np.argmax(smoothed))
        if state.label is None or best == state.label:
            state.label = best if state.label is None else state.label
            state.pending, state.pending_count = None, 0
            return state.label
        if smoothed[best] - smoothed[state.label] < cfg.margin:
            state.pending, state.pending_count = None, 0
            return state.label
        state.pending_count = state.pending_count + 1 if state.pending == best else 1
        state.pending = best
        if state.pending_count >= cfg.hold:
            state.label, state.pending, state.pending_count = best, None, 0
        return state.label

    def update(self, track_id: int, probabilities: np.ndarray) -> Tuple[np.ndarray, int]:
        probs = np.asarray(probabilities, dtype=np.float32).reshape(-1)
        state = self.states.setdefault(track_id, _TrackState())
        if state.smoothed is not None and state.smoothed.size != probs.size:
            raise ValueError(f"track {track_id}: got {probs.size} probabilities after {state.smoothed.size}; "
                             "one Smoother serves one model")
        smoothed = self._smooth(state, probs)
        if self.config.method != "ema":
            state.smoothed = smoothed
        return smoothed.astype(np.float32, copy=True), self._hysteresis(state, smoothed)


def count_flips(labels: Iterable) -> int:
    """How many times a label sequence changes value (0 for a constant sequence)."""
    labels = list(labels)
    return sum(1 for a, b in zip(labels, labels[1:]) if a != b)
