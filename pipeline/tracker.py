"""A light IoU tracker: stable ids for faces that move a little between frames, expiry for lost ones.

No appearance model, no motion model: a robot or kiosk camera sees few faces moving slowly, and
matching boxes by overlap is enough to keep one id per person for smoothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from fer_edge.pipeline.detection import Box, box_iou


@dataclass
class Track:
    track_id: int
    box: Box
    hits: int = 1          # frames in which it was matched
    missed: int = 0        # consecutive frames without a match


class IouTracker:
    """Greedy IoU matching of this frame's boxes to live tracks.

    iou_threshold: minimum overlap to continue a track (default 0.3).
    max_missed: a track not matched for more than this many frames expires, and its id is never reused.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.tracks: Dict[int, Track] = {}
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()
        self._next_id = 1

    def update(self, boxes: Sequence[Box]) -> List[int]:
        """Match boxes to tracks; returns one track id per box (same order). Unmatched tracks age and expire."""
        ids = [0] * len(boxes)
        live = list(self.tracks.values())
        if boxes and live:
            iou = box_iou(np.asarray(boxes), np.asarray([t.box for t in live]))
            # Greedy: take the best remaining pair until overlaps fall below the threshold.
            pairs = np.argwhere(iou >= self.iou_threshold)
            order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
            used_box, used_track = set(), set()
            for bi, ti in pairs[order]:
                if bi in used_box or ti in used_track:
                    continue
                used_box.add(bi)
                used_track.add(ti)
                track = live[ti]
                track.box, track.missed = tuple(boxes[bi]), 0
                track.hits += 1
                ids[bi] = track.track_id
        matched = set(ids)
        for track in live:
            if track.track_id not in matched:
                track.missed += 1
                if track.missed > self.max_missed:
                    del self.tracks[track.track_id]
        for i, box in enumerate(boxes):
            if ids[i] == 0:
                ids[i] = self._next_id
                self.tracks[self._next_id] = Track(self._next_id, tuple(box))
                self._next_id += 1
        return ids

    @property
    def active_ids(self) -> List[int]:
        return list(self.tracks)
