"""Non-maximum suppression in NumPy, for runtimes outside JAX (the exported ONNX detector).

The same rule as `jdet.postprocess.nms` (ultralytics' `non_max_suppression` with
``multi_label=False``, docs/inference.md): each anchor keeps its best class; the top
``pre_nms_topk`` anchors by score are candidates, ties broken by lower index; a candidate needs
score > ``conf_threshold``; it is dropped when an already kept box of the same class has IoU >
``iou_threshold`` with it; at most ``max_det`` survive, best first. IoU is computed in float32
as `jdet.boxes.box_iou_matrix` does (0 where the union is 0), so both give the same boxes. Cost: one
IoU row per kept box, ~5 ms per frame for 5,440 anchors at threshold 0.001 on a 2-core Xeon.
"""

from __future__ import annotations

import numpy as np


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    max_det: int = 100,
    iou_threshold: float = 0.45,
    conf_threshold: float = 0.25,
    pre_nms_topk: int = 1000,
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: boxes [A, 4], scores [A, C] (or [A], one class) → the kept boxes [n, 4],
    scores [n] and classes [n] (int32), best first, n ≤ max_det."""
    if max_det < 1 or pre_nms_topk < 1:
        raise ValueError(f"nms: max_det ({max_det}) and pre_nms_topk ({pre_nms_topk}) must be >= 1")
    scores = np.asarray(scores, np.float32)
    if scores.ndim == 1:
        scores = scores[:, None]
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"nms: want boxes [A, 4], scores [A, C]; got {boxes.shape}, {scores.shape}"
        )
    scores = np.nan_to_num(scores, nan=-1.0)
    best = scores.max(-1)
    cls = scores.argmax(-1).astype(np.int32)
    order = np.argsort(-best, kind="stable")[:pre_nms_topk]
    order = order[best[order] > np.float32(conf_threshold)]  # a prefix of the score order
    cand = np.asarray(boxes, np.float32)[order]
    cand_cls = cls[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(cand[:, j]) for j in range(4))
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    thr = np.float32(iou_threshold)
    # Greedy in score order, one IoU row per kept box (at most max_det rows, not k²), with the
    # arithmetic of jdet.boxes.box_iou_matrix term by term.
    alive = np.ones(len(order), bool)
    keep: list[int] = []
    i = 0
    while len(keep) < max_det:
        rest = np.flatnonzero(alive[i:])
        if not rest.size:
            break
        i += int(rest[0])
        keep.append(i)
        j = slice(i + 1, None)
        w = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), 0)
        h = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), 0)
        inter = w * h
        union = area[i] + area[j] - inter
        # inter / union > thr where union > 0 (IoU 0 otherwise, never above thr ≥ 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            suppresses = (union > 0) & (inter / np.where(union > 0, union, 1) > thr)
        if not class_agnostic:
            suppresses &= cand_cls[j] == cand_cls[i]
        alive[j] &= ~suppresses
        i += 1
    idx = order[keep]
    return cand[keep], best[idx], cls[idx]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, **kw
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes [B, A, 4], scores [B, A, C] or [B, A] → padded like `jdet.postprocess.nms`:
    boxes [B, max_det, 4], scores [B, max_det], valid [B, max_det] (padding rows 0, False)."""
    max_det = kw.get("max_det", 100)
    b = boxes.shape[0]
    out_boxes = np.zeros((b, max_det, 4), np.float32)
    out_scores = np.zeros((b, max_det), np.float32)
    valid = np.zeros((b, max_det), bool)
    for i in range(b):
        kb, ks, _ = nms(boxes[i], scores[i], **kw)
        n = len(ks)
        out_boxes[i, :n], out_scores[i, :n], valid[i, :n] = kb, ks, True
    return out_boxes, out_scores, valid
