"""Draw pipeline results on a frame: box, smoothed label, confidence bar, track id, landmarks."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from fer_edge.pipeline.detection import to_bgr

# BGR colours per common FER label; other labels get a colour derived from their name.
COLOURS = {"angry": (40, 40, 230), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 240),
           "sad": (200, 120, 40), "surprise": (40, 160, 255), "neutral": (200, 200, 200),
           "contempt": (120, 90, 60)}


def label_colour(label: str):
    if label in COLOURS:
        return COLOURS[label]
    h = sum(ord(c) * 37 for c in label)
    return (h % 200 + 55, (h // 7) % 200 + 55, (h // 49) % 200 + 55)


def annotate(frame: np.ndarray, results: Sequence, copy: bool = True) -> np.ndarray:
    """Return a BGR image with every FaceResult drawn on it (the input frame is left untouched unless copy=False)."""
    image = to_bgr(frame)
    if copy or image is not frame:
        image = image.copy()
    h, w = image.shape[:2]
    thick = max(1, int(round(min(h, w) / 320)))
    font = max(0.35, min(h, w) / 900)
    for face in results:
        x, y, bw, bh = (int(round(v)) for v in face.box)
        colour = label_colour(face.smoothed_label)
        cv2.rectangle(image, (x, y), (x + bw, y + bh), colour, thick)
        text = f"#{face.track_id} {face.smoothed_label} {face.smoothed_score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        ty = y - 6 if y - th - 6 > 0 else y + bh + th + 6
        cv2.rectangle(image, (x, ty - th - base), (x + tw, ty + base), (0, 0, 0), -1)
        cv2.putText(image, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, font, colour, thick, cv2.LINE_AA)
        # Confidence bar under the box: full width = probability 1.
        bar_y = min(h - 1, y + bh + 3)
        bar_h = max(3, thick * 3)
        cv2.rectangle(image, (x, bar_y), (x + bw, bar_y + bar_h), (60, 60, 60), -1)
        cv2.rectangle(image, (x, bar_y), (x + int(bw * max(0.0, min(1.0, face.smoothed_score))), bar_y + bar_h),
                      colour, -1)
        if face.landmarks is not None:
            for px, py in np.asarray(face.landmarks).reshape(-1, 2):
                cv2.circle(image, (int(px), int(py)), thick + 1, (0, 255, 0), -1)
    return image
