"""Non-maximum suppression in NumPy, for runtimes outside JAX (the exported ONNX detector).

The same rule as `jdet.postprocess.nms` (ultralytics' `non_max_suppression` with
``multi_label=False``, docs/inference.md): each anchor keeps its best class; the top
``pre_nms_topk`` anchors by score are candidates, ties broken by lower index; a candidate needs
score > ``conf_threshold``; it is dropped when an already kept box of the same class has IoU >
``iou_threshold`` with it; at most ``max_det`` survive, best first. IoU is computed in float32
as `jdet.boxes.box_iou_matrix` does (0 where the union is 0), so both give the same boxes.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, 4] × [m, 4] xyxy → [n, m] float32 IoU, 0 where the union is 0."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


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
    suppresses = iou_matrix(cand, cand) > np.float32(iou_threshold)
    if not class_agnostic:
        suppresses &= cls[order][:, None] == cls[order][None, :]
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_det:
            break
        suppressed |= suppresses[i]
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
