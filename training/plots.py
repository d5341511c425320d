"""Training curves and confusion-matrix figures (matplotlib, imported lazily with the Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: List[Dict[str, float]], path) -> None:
    """Train loss (left) and PublicTest top-1 / macro-F1 of the EMA model (right) per epoch."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a1.set_xlabel("epoch"); a1.set_ylabel("loss"); a1.grid(alpha=.3); a1.legend()
    a2.plot(ep, [h["val_top1"] for h in history], "o-", label="PublicTest top-1 (EMA)")
    a2.plot(ep, [h["val_macro_f1"] for h in history], "s-", label="PublicTest macro-F1 (EMA)")
    if all("train_top1" in h for h in history):
        a2.plot(ep, [h["train_top1"] for h in history], "^--", label="train top-1 (augmented)")
    a2.set_xlabel("epoch"); a2.set_ylabel("%"); a2.grid(alpha=.3); a2.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path, title: str = "") -> None:
    """Row-normalised confusion matrix (recall per true class) with counts in each cell."""
    plt = _plt()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels))); ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels))); ax.set_yticklabels(labels)
    ax.set_xlabel("predicted"); ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]*100:.0f}%\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
