"""Evaluation plots (matplotlib, Agg) → workdir/plots/: PR curve, ST-IoU per video and sample
detections. `pyplot()` gives matplotlib's pyplot on the Agg backend (no screen needed)."""

from __future__ import annotations

import pathlib

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curve(
    recall: np.ndarray, precision: np.ndarray, path: str | pathlib.Path, title: str = ""
) -> pathlib.Path:
    """Precision over recall (COCO's 101 recall points; precision < 0 = not reached) → PNG."""
    plt = pyplot()
    recall, precision = np.asarray(recall), np.asarray(precision)
    reached = precision >= 0
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall[reached], precision[reached], color="tab:blue")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title or "precision-recall at IoU 0.5", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return pathlib.Path(path)


def plot_per_video(
    per_video: dict[str, float], path: str | pathlib.Path, mean: float
) -> pathlib.Path:
    """ST-IoU per video as horizontal bars with the mean → PNG."""
    plt = pyplot()
    names = list(per_video)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), [per_video[n] for n in names], color="tab:green")
    ax.axvline(mean, color="black", ls="--", lw=1, label=f"mean {mean:.3f}")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="ST-IoU", xlim=(0, 1), title="ST-IoU per video")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return pathlib.Path(path)


def plot_samples(samples: list[dict], path: str | pathlib.Path, columns: int = 4) -> pathlib.Path:
    """Frames with ground truth (green) and predicted boxes (red, score) → one PNG grid.

    samples: dicts with "image" [H, W, 3] uint8, "title" str, "gt" (x1, y1, x2, y2) or None,
    "pred" [n, 5] f32 (x1, y1, x2, y2, score) in frame pixels.
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    rows = max(1, -(-len(samples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample in zip(axes.ravel(), samples):
        ax.imshow(sample["image"])
        gt = sample.get("gt")
        if gt is not None:
            x1, y1, x2, y2 = gt
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.5))
        for x1, y1, x2, y2, score in np.asarray(sample.get("pred", np.zeros((0, 5)))):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.2))
            ax.text(x1, y1, f"{score:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(sample.get("title", ""), fontsize=7)
    fig.suptitle("green: ground truth, red: predictions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return pathlib.Path(path)
