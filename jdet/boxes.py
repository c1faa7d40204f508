"""Box geometry: conversions, the IoU family, anchors and distance encodings.

Follows ultralytics/utils/metrics.py `bbox_iou` and ultralytics/utils/tal.py `make_anchors`,
`dist2bbox`, `bbox2dist` (8.3 era), with the guards of docs/losses.md §7 so that values *and*
gradients stay finite for degenerate boxes (zero width/height, inverted, identical, huge).

All boxes are ``[..., 4]`` float arrays in xyxy order unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

IoUKind = Literal["iou", "giou", "diou", "ciou"]


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
    """[..., 4] xyxy → [..., 4] (centre x, centre y, width, height)."""
    x1, y1, x2, y2 = jnp.split(boxes, 4, axis=-1)
    return jnp.concatenate([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """[..., 4] (centre x, centre y, width, height) → [..., 4] xyxy."""
    cx, cy, w, h = jnp.split(boxes, 4, axis=-1)
    return jnp.concatenate([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
    """[..., 4] xyxy → [...] area, 0 for inverted boxes."""
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def _iou_parts(box1: jax.Array, box2: jax.Array, eps: float):
    """Shared pieces of the IoU family for broadcast boxes [..., 4] xyxy."""
    b1x1, b1y1, b1x2, b1y2 = (box1[..., i] for i in range(4))
    b2x1, b2y1, b2x2, b2y2 = (box2[..., i] for i in range(4))
    # ultralytics adds eps to heights only; widths/heights are clipped at 0 here so an inverted
    # box has zero area and the union stays >= eps (their code would go negative).
    w1 = jnp.maximum(b1x2 - b1x1, 0.0)
    h1 = jnp.maximum(b1y2 - b1y1, 0.0) + eps
    w2 = jnp.maximum(b2x2 - b2x1, 0.0)
    h2 = jnp.maximum(b2y2 - b2y1, 0.0) + eps
    inter_w = jnp.maximum(jnp.minimum(b1x2, b2x2) - jnp.maximum(b1x1, b2x1), 0.0)
    inter_h = jnp.maximum(jnp.minimum(b1y2, b2y2) - jnp.maximum(b1y1, b2y1), 0.0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw, ch = _enclosing_wh(box1, box2)
    return dict(
        b1=(b1x1, b1y1, b1x2, b1y2),
        b2=(b2x1, b2y1, b2x2, b2y2),
        w1=w1,
        h1=h1,
        w2=w2,
        h2=h2,
        union=union,
        iou=iou,
        cw=cw,
        ch=ch,
    )


def center_distance_sq(box1: jax.Array, box2: jax.Array) -> jax.Array:
    """Squared distance between box centres, [...]."""
    dx = (box2[..., 0] + box2[..., 2] - box1[..., 0] - box1[..., 2]) / 2
    dy = (box2[..., 1] + box2[..., 3] - box1[..., 1] - box1[..., 3]) / 2
    return dx**2 + dy**2


def _enclosing_wh(box1: jax.Array, box2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Width and height of the smallest box enclosing both boxes' corners.

    For valid boxes this is ultralytics' max(x2) − min(x1). Taking all four coordinates keeps
    it an enclosing box for inverted boxes too, so ρ² ≤ c² and DIoU/CIoU stay ≥ −1.5.
    """
    def span(c1a, c1b, c2a, c2b):
        hi = jnp.maximum(jnp.maximum(c1a, c1b), jnp.maximum(c2a, c2b))
        lo = jnp.minimum(jnp.minimum(c1a, c1b), jnp.minimum(c2a, c2b))
        return hi - lo

    cw = span(box1[..., 0], box1[..., 2], box2[..., 0], box2[..., 2])
    ch = span(box1[..., 1], box1[..., 3], box2[..., 1], box2[..., 3])
    return cw, ch


def enclosing_diag_sq(box1: jax.Array, box2: jax.Array) -> jax.Array:
    """Squared diagonal of the smallest box enclosing both, [...] (no eps)."""
    cw, ch = _enclosing_wh(box1, box2)
    return cw**2 + ch**2


def bbox_iou(
    box1: jax.Array, box2: jax.Array, kind: IoUKind = "iou", eps: float = 1e-7
) -> jax.Array:
    """IoU, GIoU, DIoU or CIoU of broadcastable boxes.

    Follows ultralytics/utils/metrics.py `bbox_iou(xywh=False)`; for boxes with positive width
    and height the numbers are the same. Differences, all for NaN safety (docs/losses.md §7.6–§7.7):
    negative widths/heights count as 0 in areas, and the aspect term uses max(h, eps).

    Args:
      box1: [..., 4] f32, xyxy.
      box2: [..., 4] f32, xyxy, broadcastable with box1.
      kind: "iou" | "giou" | "diou" | "ciou".
      eps: the ultralytics epsilon (1e-7).

    Returns:
      [...] f32: the requested overlap, in (-1, 1].
    """
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"bbox_iou: kind must be iou|giou|diou|ciou, got {kind!r}")
    p = _iou_parts(box1, box2, eps)
    iou = p["iou"]
    if kind == "iou":
        return iou
    cw, ch = p["cw"], p["ch"]
    if kind == "giou":
        c_area = cw * ch + eps
        # The enclosing area is never below the union geometrically; with the eps-padded
        # heights of near-flat boxes it can be, so clamp (else GIoU of two identical flat
        # boxes would be 2).
        return iou - jnp.maximum(c_area - p["union"], 0.0) / c_area
    c2 = cw**2 + ch**2 + eps
    rho2 = center_distance_sq(box1, box2)
    if kind == "diou":
        return iou - rho2 / c2
    # CIoU aspect-ratio term. h already carries +eps; the max() keeps it >= eps for any input
    # (ultralytics' h + eps alone reaches 0 for h = -eps and then atan's gradient is 0 * inf).
    ratio2 = p["w2"] / jnp.maximum(p["h2"], eps)
    ratio1 = p["w1"] / jnp.maximum(p["h1"], eps)
    v = (4 / math.pi**2) * (jnp.arctan(ratio2) - jnp.arctan(ratio1)) ** 2
    alpha = jax.lax.stop_gradient(v / (v - iou + (1 + eps)))
    return iou - (rho2 / c2 + v * alpha)


def box_iou_matrix(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Plain IoU between every pair: [N, 4] × [M, 4] → [N, M] (COCO style, no eps on sizes)."""
    area1 = box_area(boxes1)[:, None]
    area2 = box_area(boxes2)[None, :]
    lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def make_anchors(
    feat_hw: Sequence[tuple[int, int]], strides: Sequence[float], offset: float = 0.5
) -> tuple[jax.Array, jax.Array]:
    """Anchor points of a feature pyramid, in grid units, fine → coarse.

    Follows ultralytics/utils/tal.py `make_anchors`: points (j + offset, i + offset) for every
    cell, row-major per level, levels concatenated in the given order.

    Args:
      feat_hw: [(H, W), ...] feature sizes per level (static Python ints).
      strides: stride of each level in pixels.
      offset: cell-centre offset (0.5).

    Returns:
      points: [A, 2] f32 (x, y) in grid units of their level (multiply by stride for pixels).
      stride_per_anchor: [A, 1] f32.
    """
    if len(feat_hw) != len(strides):
        raise ValueError(
            f"make_anchors: {len(feat_hw)} feature sizes but {len(strides)} strides"
        )
    points, stride_list = [], []
    for (h, w), s in zip(feat_hw, strides):
        sx = jnp.arange(w, dtype=jnp.float32) + offset
        sy = jnp.arange(h, dtype=jnp.float32) + offset
        yy, xx = jnp.meshgrid(sy, sx, indexing="ij")
        points.append(jnp.stack([xx, yy], axis=-1).reshape(-1, 2))
        stride_list.append(jnp.full((h * w, 1), s, dtype=jnp.float32))
    return jnp.concatenate(points, axis=0), jnp.concatenate(stride_list, axis=0)


def dist2bbox(dist: jax.Array, points: jax.Array) -> jax.Array:
    """ltrb distances → xyxy boxes: (p − lt, p + rb).

    Args:
      dist: [..., 4] f32 (left, top, right, bottom) distances, same units as points.
      points: [..., 2] f32 anchor points (x, y), broadcastable.
    Returns:
      [..., 4] f32 xyxy.
    """
    lt, rb = dist[..., :2], dist[..., 2:]
    return jnp.concatenate([points - lt, points + rb], axis=-1)


def bbox2dist(points: jax.Array, boxes: jax.Array, max_dist: float) -> jax.Array:
    """xyxy boxes → ltrb distances from the points, clipped to [0, max_dist − 0.01].

    Follows ultralytics/utils/tal.py `bbox2dist`; with R DFL bins call it with
    ``max_dist = R − 1`` so the interpolation's right bin always exists.

    Args:
      points: [..., 2] f32 anchor points.
      boxes: [..., 4] f32 xyxy, broadcastable.
      max_dist: float, the last bin index (R − 1).
    Returns:
      [..., 4] f32 distances.
    """
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return jnp.clip(jnp.concatenate([lt, rb], axis=-1), 0.0, max_dist - 0.01)
