"""Target assignment with static shapes: task-aligned (default) and centre-based (the original's).

Everything here runs without gradient (inputs and outputs pass through stop_gradient) and with
fixed shapes: GT boxes are padded to M with ``gt_mask``; an image with no real GT yields
all-background targets; `lax.top_k` uses k = min(topk, A).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jdet.boxes import bbox_iou
from jdet.dtypes import at_least_f32


class Assignment(NamedTuple):
    """Per-anchor targets.

    labels:   [B, A] i32, class of the kept GT (0 where background; use fg_mask).
    boxes:    [B, A, 4] f32, xyxy pixels of the kept GT (that of GT 0 where background).
    scores:   [B, A, C] f32, soft one-hot targets, 0 on background.
    fg_mask:  [B, A] bool, anchor has a GT.
    gt_index: [B, A] i32, index of the kept GT in [0, M).
    """

    labels: jax.Array
    boxes: jax.Array
    scores: jax.Array
    fg_mask: jax.Array
    gt_index: jax.Array


def points_in_boxes(points: jax.Array, boxes: jax.Array, eps: float = 1e-9) -> jax.Array:
    """Whether each point lies strictly inside each box.

    Follows ultralytics/utils/tal.py `select_candidates_in_gts`.

    Args:
      points: [A, 2] f32 pixels.
      boxes: [B, M, 4] f32 xyxy pixels.
    Returns:
      [B, M, A] bool.
    """
    lt = points[None, None] - boxes[:, :, None, :2]  # [B, M, A, 2]
    rb = boxes[:, :, None, 2:] - points[None, None]
    return jnp.minimum(lt.min(-1), rb.min(-1)) > eps


def _gather_targets(gt_labels, gt_boxes, gt_index, fg_mask, num_classes):
    """Labels, boxes and one-hot scores of the kept GT per anchor."""
    labels = jnp.take_along_axis(gt_labels, gt_index, axis=1)  # [B, A]
    # Padded GTs may carry any label: clip so the one-hot never indexes out of range
    # (docs/losses.md §7.11: gathers clamp silently under jit).
    labels = jnp.clip(labels, 0, num_classes - 1)
    boxes = jnp.take_along_axis(gt_boxes, gt_index[..., None], axis=1)  # [B, A, 4]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    onehot = jnp.where(fg_mask[..., None], onehot, 0.0)
    return labels, boxes, onehot


def task_aligned_assign(
    pred_scores: jax.Array,
    pred_boxes: jax.Array,
    anchor_points: jax.Array,
    gt_labels: jax.Array,
    gt_boxes: jax.Array,
    gt_mask: jax.Array,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> Assignment:
    """Task-aligned assignment (TOOD), with ultralytics 8.3 semantics.

    Follows ultralytics/utils/tal.py `TaskAlignedAssigner` (as called by v8DetectionLoss:
    topk 10, alpha 0.5, beta 6): candidates are anchors strictly inside a real GT; the alignment
    metric is ``score^alpha * max(CIoU, 0)^beta``; each GT keeps its top-k anchors; an anchor
    positive for several GTs keeps the GT of highest CIoU; target scores are the one-hot label
    times the per-GT normalised alignment ``t * max_pos(iou) / (max_pos(t) + eps)``.

    Args:
      pred_scores: [B, A, C] f32 class probabilities (sigmoid of logits).
      pred_boxes: [B, A, 4] f32 xyxy pixels.
      anchor_points: [A, 2] f32 pixels.
      gt_labels: [B, M] i32 class per GT (any value where padded).
      gt_boxes: [B, M, 4] f32 xyxy pixels.
      gt_mask: [B, M] bool, real GT.
      topk, alpha, beta, eps: as in the reference.

    Returns:
      Assignment, with stop_gradient applied.
    """
    pred_scores = jax.lax.stop_gradient(at_least_f32(pred_scores))
    pred_boxes = jax.lax.stop_gradient(at_least_f32(pred_boxes))
    gt_boxes = at_least_f32(gt_boxes)
    _, num_anchors, num_classes = pred_scores.shape
    m = gt_boxes.shape[1]
    gt_mask = gt_mask.astype(bool)

    in_gts = points_in_boxes(anchor_points, gt_boxes) & gt_mask[..., None]  # [B, M, A]
    # Alignment metric, only on candidates (zero elsewhere, like the reference).
    labels_idx = jnp.clip(gt_labels, 0, num_classes - 1)  # [B, M]
    cls_scores = jnp.take_along_axis(
        jnp.swapaxes(pred_scores, 1, 2), labels_idx[..., None], axis=1
    )  # [B, M, A]: score of each anchor for the GT's class
    ious = bbox_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :], kind="ciou", eps=1e-7)
    ious = jnp.where(in_gts, jnp.maximum(ious, 0.0), 0.0)  # [B, M, A]
    cls_scores = jnp.where(in_gts, cls_scores, 0.0)
    align = cls_scores**alpha * ious**beta  # [B, M, A]

    # Top-k anchors per GT. The reference zeroes the indices of padded GTs and then drops any
    # anchor picked more than once; here padded GTs simply select nothing.
    k = min(topk, num_anchors)
    _, top_idx = jax.lax.top_k(align, k)  # [B, M, k]
    in_topk = jax.nn.one_hot(top_idx, num_anchors, dtype=jnp.float32).sum(-2) > 0  # [B, M, A]
    mask_pos = in_topk & in_gts  # in_gts already includes gt_mask

    # Resolve anchors claimed by several GTs: keep the GT of highest IoU over *all* candidate
    # GTs (ultralytics takes argmax of the overlaps, not only among the claiming GTs).
    num_claims = mask_pos.sum(1)  # [B, A]
    best_gt = jnp.argmax(ious, axis=1)  # [B, A]
    best_onehot = jax.nn.one_hot(best_gt, m, axis=1, dtype=bool)  # [B, M, A]
    mask_pos = jnp.where((num_claims > 1)[:, None, :], best_onehot, mask_pos)
    fg_mask = mask_pos.any(1)  # [B, A]
    gt_index = jnp.argmax(mask_pos, axis=1).astype(jnp.int32)  # [B, A], 0 on background

    labels, boxes, onehot = _gather_targets(gt_labels, gt_boxes, gt_index, fg_mask, num_classes)

    # Soft scores normalised per GT over its positives.
    align_pos = align * mask_pos
    max_align = align_pos.max(-1, keepdims=True)  # [B, M, 1]
    max_iou = (ious * mask_pos).max(-1, keepdims=True)  # [B, M, 1]
    norm_align = (align_pos * max_iou / (max_align + eps)).max(1)  # [B, A]
    scores = onehot * norm_align[..., None]
    out = Assignment(labels.astype(jnp.int32), boxes, scores, fg_mask, gt_index)
    return jax.tree.map(jax.lax.stop_gradient, out)


def center_assign(
    anchor_points: jax.Array,
    gt_labels: jax.Array,
    gt_boxes: jax.Array,
    gt_mask: jax.Array,
    num_classes: int,
) -> Assignment:
    """Centre-based assignment, the original's rule (docs/original.md §3), for comparison.

    Every anchor whose centre lies inside a real GT is positive for it, at every scale; a GT
    that contains no anchor centre takes the anchor nearest its centre. An anchor inside several
    GTs keeps the smallest one (the FCOS convention; the most specific box). Target scores are
    the plain one-hot label (no soft alignment).

    Args:
      anchor_points: [A, 2] f32 pixels.
      gt_labels: [B, M] i32; gt_boxes: [B, M, 4] f32 xyxy pixels; gt_mask: [B, M] bool.
      num_classes: C.

    Returns:
      Assignment, with stop_gradient applied.
    """
    gt_boxes = at_least_f32(gt_boxes)
    gt_mask = gt_mask.astype(bool)
    num_anchors = anchor_points.shape[0]
    inside = points_in_boxes(anchor_points, gt_boxes) & gt_mask[..., None]  # [B, M, A]
    centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # [B, M, 2]
    dist2 = ((anchor_points[None, None] - centres[:, :, None]) ** 2).sum(-1)  # [B, M, A]
    nearest = jax.nn.one_hot(jnp.argmin(dist2, -1), num_anchors, dtype=bool)  # [B, M, A]
    has_inside = inside.any(-1, keepdims=True)
    claims = jnp.where(has_inside, inside, nearest & gt_mask[..., None])  # [B, M, A]
    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
    area = jnp.where(claims, area[..., None], jnp.inf)  # [B, M, A]
    fg_mask = claims.any(1)
    gt_index = jnp.argmin(area, axis=1).astype(jnp.int32)
    labels, boxes, onehot = _gather_targets(gt_labels, gt_boxes, gt_index, fg_mask, num_classes)
    out = Assignment(labels.astype(jnp.int32), boxes, onehot, fg_mask, gt_index)
    return jax.tree.map(jax.lax.stop_gradient, out)
