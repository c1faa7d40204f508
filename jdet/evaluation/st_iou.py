"""The challenge's score, ST-IoU (docs/losses.md §8), and the per-video report.

Per video, with G the frames that have a ground-truth box and P the frames with a predicted
box: ``Σ_{f∈G∩P} IoU(g_f, p_f) / |G ∪ P|``; the score is the mean over the ground truth's
videos. Missing a frame and firing on a background frame each add one frame to the
denominator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jdet.submission import Box, Detections, Tracks, names, submission_from_detections

# ----------------------------------------------------------------------------------- ST-IoU


def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two xyxy boxes (pixels), without +1 and without eps; 0.0 when the union is 0.

    Follows the original's src/metrics/st_iou.py `compute_spatial_iou` (075f362).
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in box1[:4])
    bx1, by1, bx2, by2 = (float(v) for v in box2[:4])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def st_iou_video(gt: Mapping[int, Box], pred: Mapping[int, Box]) -> float:
    """ST-IoU of one video: Σ_{f∈G∩P} IoU(gt[f], pred[f]) / |G ∪ P|.

    gt, pred: {frame: (x1, y1, x2, y2)} absolute pixels, at most one box per frame.
    Empty cases: 0.0 whenever G ∪ P is empty, i.e. also when both GT and prediction are empty
    (a negative video correctly left blank scores 0, not 1). This follows the original
    (it-dainb/zalo_ai_2025 @ 075f362, src/metrics/st_iou.py `compute_st_iou`: "if
    len(union_frames) == 0: return 0.0", asserted by src/tests/test_st_iou.py
    `test_empty_detections`) and docs/original.md §6.
    """
    union = len(gt.keys() | pred.keys())
    if union == 0:
        return 0.0
    both = gt.keys() & pred.keys()
    return sum(box_iou(gt[f], pred[f]) for f in both) / union


def st_iou(
    gt: Mapping[str, Mapping[int, Box]], pred: Mapping[str, Mapping[int, Box]]
) -> tuple[float, dict[str, float]]:
    """Mean ST-IoU over the ground truth's videos → (mean, {video_id: ST-IoU}).

    A video of `gt` missing from `pred` counts as predicting nothing (scores 0). Videos in
    `pred` but not in `gt` raise ValueError naming them. No videos at all gives a mean of 0.0
    (as the original's `compute_st_iou_batch`).
    """
    extra = [v for v in pred if v not in gt]
    if extra:
        raise ValueError(f"predictions for videos not in the ground truth: {names(extra)}")
    per_video = {vid: st_iou_video(boxes, pred.get(vid, {})) for vid, boxes in gt.items()}
    mean = sum(per_video.values()) / len(per_video) if per_video else 0.0
    return mean, per_video


# ----------------------------------------------------------------------------------- report


def tune_conf_threshold(
    gt: Tracks, detections: Detections, grid: Iterable[float] | None = None
) -> tuple[float, float]:
    """(threshold, mean ST-IoU) maximising ST-IoU of `submission_from_detections` over `grid`
    (default 0.01, 0.02, …, 0.95; ties go to the higher threshold). Tune on videos you do not
    report on."""
    grid = np.round(np.arange(0.01, 0.955, 0.01), 2) if grid is None else grid
    best = (0.25, -1.0)
    for conf in grid:
        mean, _ = st_iou(gt, submission_from_detections(detections, float(conf)))
        if mean >= best[1]:
            best = (float(conf), float(mean))
    return best


def per_video_table(
    gt: Mapping[str, Mapping[int, Box]],
    pred: Mapping[str, Mapping[int, Box]],
    per_video: Mapping[str, float] | None = None,
) -> str:
    """A text table: video_id, GT frames, predicted frames, frames in both, ST-IoU; then the mean.

    per_video: ST-IoU per video if already computed (default: computed with `st_iou`, which
    also checks that `pred` has no video outside `gt`).
    """
    if per_video is None:
        _, per_video = st_iou(gt, pred)
    rows = [("video_id", "GT frames", "pred frames", "both", "ST-IoU")]
    for video_id in gt:
        gt_frames, pred_frames = gt[video_id], pred.get(video_id, {})
        rows.append(
            (
                video_id,
                str(len(gt_frames)),
                str(len(pred_frames)),
                str(len(gt_frames.keys() & pred_frames.keys())),
                f"{per_video[video_id]:.4f}",
            )
        )
    scores = [per_video[v] for v in gt]
    mean = sum(scores) / len(scores) if scores else 0.0
    label = f"mean ({len(scores)} video{'' if len(scores) == 1 else 's'})"
    rows.append((label, "", "", "", f"{mean:.4f}"))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 5)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(width0)] + [c.rjust(w) for c, w in zip(row[1:], widths)]
        if n == len(rows) - 1:
            lines.append("-" * len("  ".join(cells)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
