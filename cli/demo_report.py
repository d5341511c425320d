"""What fer-demo tells a person: one line per face in a photo; for videos and cameras one line when a person
appears or their shown expression changes, and a per-person summary at the end."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Sequence


def box_text(box) -> str:
    x, y, w, h = (int(round(v)) for v in box)
    return f"box x={x} y={y} w={w} h={h}"


def photo_lines(name: str, results: Sequence) -> List[str]:
    """`group.png face 1: happy 0.87, box x=245 y=111 w=146 h=190` per face, or one line saying there is none."""
    if not results:
        return [f"{name}: no face found"]
    return [f"{name} face {i}: {r.label} {r.score:.2f}, {box_text(r.box)}" for i, r in enumerate(results, 1)]


@dataclass
class Track:
    first: int
    last: int
    labels: Counter = field(default_factory=Counter)   # shown (smoothed) label -> frames
    shown: str = ""


class TrackReport:
    """Per-track events while a video runs, and the summary after it."""

    def __init__(self):
        self.tracks: Dict[int, Track] = {}

    def update(self, frame_index: int, results: Sequence) -> List[str]:
        """Lines for the people who appeared or whose shown label changed in this frame."""
        lines = []
        for r in results:
            track = self.tracks.setdefault(r.track_id, Track(frame_index, frame_index))
            track.last = frame_index
            track.labels[r.smoothed_label] += 1
            if r.smoothed_label != track.shown:
                change = "appears" if not track.shown else f"was {track.shown}"
                lines.append(f"frame {frame_index} person {r.track_id}: {r.smoothed_label} {r.smoothed_score:.2f}, "
                             f"{box_text(r.box)} ({change})")
                track.shown = r.smoothed_label
        return lines

    def summary(self) -> List[str]:
        """`person 1: frames 0-59, in 60 of them: happy 90%, neutral 10%` per track, in order of appearance."""
        if not self.tracks:
            return ["no face found in any frame"]
        lines = []
        for track_id, t in self.tracks.items():
            seen = sum(t.labels.values())
            shares = ", ".join(f"{label} {100 * n / seen:.0f}%" for label, n in t.labels.most_common())
            lines.append(f"person {track_id}: frames {t.first}-{t.last}, in {seen} of them: {shares}")
        return lines
