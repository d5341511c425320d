"""Confusion-matrix PNG drawn with OpenCV (matplotlib is not part of the lean install)."""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from fer_edge.models.artifact_writer import atomic_write_bytes

CELL = 64
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GRID = (255, 255, 255), (20, 20, 20), (200, 200, 200)


def _text_size(text: str, scale: float, thickness: int = 1):
    (w, h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    return w, h + baseline


def _shade(fraction: float):
    """White (0) to dark blue (1), in BGR."""
    f = float(np.clip(fraction, 0.0, 1.0))
    light, dark = np.array([255, 255, 255]), np.array([120, 40, 10])
    return tuple(int(v) for v in light + (dark - light) * f)


def render_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = "") -> np.ndarray:
    """BGR image: counts in each cell, shading by row-normalised share (recall), class names on both axes."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {k} labels")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)

    label_scale = 0.5
    left = max(_text_size(name, label_scale)[0] for name in labels) + 40
    top = left + 30  # column names are written vertically, so they need as much room as the row names
    width, height = left + k * CELL + 20, top + k * CELL + 40
    image = np.full((height, width, 3), 255, dtype=np.uint8)

    if title:
        cv2.putText(image, title[:90], (10, 20), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "true \\ predicted", (10, top - 8), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * CELL, top + i * CELL
            cv2.rectangle(image, (x0, y0), (x0 + CELL, y0 + CELL), _shade(share[i, j]), -1)
            cv2.rectangle(image, (x0, y0), (x0 + CELL, y0 + CELL), GRID, 1)
            colour = WHITE if share[i, j] > 0.5 else BLACK
            count, pct = str(counts[i, j]), f"{100 * share[i, j]:.0f}%"
            cw, _ = _text_size(count, 0.5)
            pw, _ = _text_size(pct, 0.4)
            cv2.putText(image, count, (x0 + (CELL - cw) // 2, y0 + 28), FONT, 0.5, colour, 1, cv2.LINE_AA)
            cv2.putText(image, pct, (x0 + (CELL - pw) // 2, y0 + 48), FONT, 0.4, colour, 1, cv2.LINE_AA)
        name = labels[i]
        nw, _ = _text_size(name, label_scale)
        cv2.putText(image, name, (left - nw - 8, top + i * CELL + CELL // 2 + 5), FONT, label_scale, BLACK, 1, cv2.LINE_AA)
    # Column names: draw on a strip, then rotate it so the names read bottom-up above their columns.
    strip = np.full((CELL * k, top - 30, 3), 255, dtype=np.uint8)
    for j, name in enumerate(labels):
        cv2.putText(strip, name, (6, j * CELL + CELL // 2 + 5), FONT, label_scale, BLACK, 1, cv2.LINE_AA)
    image[30:top, left:left + k * CELL] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.putText(image, f"{int(counts.sum())} faces; shading = share of the true class (row)", (10, height - 14),
                FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    return image


def write_confusion_png(path: os.PathLike, matrix, labels: Sequence[str], title: str = "") -> None:
    ok, encoded = cv2.imencode(".png", render_confusion(matrix, labels, title))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the confusion matrix for {path}")
    atomic_write_bytes(path, encoded.tobytes())
