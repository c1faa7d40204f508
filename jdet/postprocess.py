"""Inference post-processing: DFL decoding and fixed-size NMS (on device).

`decode_boxes` turns RefDet's per-anchor bin logits into pixel boxes with the same functions the
loss uses (`dfl_expectation`, `dist2bbox`), so training and inference decode identically.

`nms` follows the semantics of ultralytics/utils/ops.py `non_max_suppression` (8.3 era) with
``multi_label=False``: each anchor keeps only its best class, candidates need score
> ``conf_threshold``, a box is dropped when an already kept box of the same class (any class when
``class_agnostic``) has IoU > ``iou_threshold`` with it, and at most ``max_det`` boxes survive,
best first. Unlike ultralytics (dynamic shapes, torchvision's NMS kernel, a class-offset trick)
everything here has static shapes so it runs under `jax.jit`: the top ``pre_nms_topk``
candidates are kept regardless of score, classes are separated by masking the IoU matrix, and
the output is padded to ``max_det`` rows with a ``valid`` mask.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jdet.boxes import box_iou_matrix, dist2bbox
from jdet.losses.dfl import dfl_expectation

# Class id of padding rows in `Detections.classes` and in column 5 of `to_array`.
INVALID_CLASS = -1


class Detections(NamedTuple):
    """Fixed-size detections per image, sorted by descending score.

    Rows past the number of kept boxes are padding: ``valid`` False, ``boxes`` 0, ``scores`` 0
    and ``classes`` ``INVALID_CLASS`` (-1).

    Attributes:
      boxes: [B, max_det, 4] f32, xyxy in the pixels of the boxes given to `nms`.
      scores: [B, max_det] f32, the class probability of each box.
      classes: [B, max_det] i32, class (way) index, -1 on padding rows.
      valid: [B, max_det] bool.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    valid: jax.Array


def decode_boxes(dist: jax.Array, anchors: jax.Array, strides: jax.Array) -> jax.Array:
    """DFL bin logits → xyxy pixel boxes (softmax expectation over bins, as the loss decodes).

    Args:
      dist: [B, A, 4, R] f32 bin logits per side (l, t, r, b); bin r means r grid units.
      anchors: [A, 2] f32 anchor points (x, y) in grid units of their level (cell centres).
      strides: [A, 1] f32 stride of each anchor's level in pixels.
    Returns:
      [B, A, 4] f32 xyxy boxes in input-image pixels.
    """
    ltrb = dfl_expectation(dist)  # [B, A, 4] grid units
    return dist2bbox(ltrb, anchors[None]) * strides[None]  # [B, A, 4] px


def _nms_single(
    boxes: jax.Array,
    scores: jax.Array,
    iou_threshold: jax.Array | float,
    conf_threshold: jax.Array | float,
    *,
    max_det: int,
    pre_nms_topk: int,
    class_agnostic: bool,
) -> Detections:
    """`nms` for one image: boxes [A, 4] f32, scores [A, C] f32 → Detections without batch."""
    num_anchors = boxes.shape[0]
    # NaN scores would sort first in top_k; send them below any threshold instead.
    scores = jnp.nan_to_num(scores.astype(jnp.float32), nan=-1.0)
    best_score = jnp.max(scores, axis=-1)  # [A]
    best_class = jnp.argmax(scores, axis=-1).astype(jnp.int32)  # [A]

    # Taking the top k before the confidence filter selects the same set as ultralytics' filter
    # then sort: the candidates that pass are a prefix of the score order. top_k breaks ties by
    # lower index, so the order is deterministic.
    k = min(pre_nms_topk, num_anchors)
    cand_score, cand_idx = jax.lax.top_k(best_score, k)  # [k] descending
    cand_boxes = boxes[cand_idx].astype(jnp.float32)  # [k, 4]
    cand_class = best_class[cand_idx]  # [k]
    passes = cand_score > conf_threshold  # [k]; a prefix of the candidates

    # box_iou_matrix returns 0 where the union is 0, so zero-area boxes give no NaN.
    iou = box_iou_matrix(cand_boxes, cand_boxes)  # [k, k]
    suppresses = iou > iou_threshold  # [k, k]
    if not class_agnostic:
        # Masking pairs of different classes is exact, where ultralytics' coordinate offset per
        # class needs a bound on box size.
        suppresses = suppresses & (cand_class[:, None] == cand_class[None, :])

    # Greedy sweep in score order. A candidate is kept iff it passes conf and no earlier kept
    # candidate suppresses it; keeping one marks every box it suppresses. The sweep stops at the
    # first failing candidate (all later ones fail too) or once max_det are kept.
    def cond(state):
        i, num_kept, _, _ = state
        return (i < k) & (num_kept < max_det) & passes[jnp.minimum(i, k - 1)]

    def body(state):
        i, num_kept, suppressed, keep = state
        keep_i = ~suppressed[i]
        suppressed = suppressed | (keep_i & suppresses[i])
        keep = keep.at[i].set(keep_i)
        return i + 1, num_kept + keep_i.astype(jnp.int32), suppressed, keep

    init = (jnp.int32(0), jnp.int32(0), jnp.zeros(k, bool), jnp.zeros(k, bool))
    *_, keep = jax.lax.while_loop(cond, body, init)

    # Indices of the first max_det kept candidates (already in score order), -1 padded.
    slot = jnp.nonzero(keep, size=max_det, fill_value=-1)[0]  # [max_det]
    valid = slot >= 0
    slot = jnp.maximum(slot, 0)
    return Detections(
        boxes=jnp.where(valid[:, None], cand_boxes[slot], 0.0),
        scores=jnp.where(valid, cand_score[slot], 0.0),
        classes=jnp.where(valid, cand_class[slot], INVALID_CLASS),
        valid=valid,
    )


@functools.partial(jax.jit, static_argnames=("max_det", "pre_nms_topk", "class_agnostic"))
def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    max_det: int = 100,
    iou_threshold: float | jax.Array = 0.45,
    conf_threshold: float | jax.Array = 0.25,
    pre_nms_topk: int = 1000,
    class_agnostic: bool = False,
) -> Detections:
    """Greedy non-maximum suppression with static shapes (jit-compatible, batched).

    Semantics of ultralytics `non_max_suppression(multi_label=False)`, see the module docstring.
    Each anchor takes only its best class (no multi-label). ``max_det``, ``pre_nms_topk`` and
    ``class_agnostic`` set shapes or code paths and are static arguments of this jitted
    function (one compile per combination and input shape); the thresholds are traced, so
    changing them does not recompile.

    Args:
      boxes: [B, A, 4] f32, xyxy (any unit; pixels in practice).
      scores: [B, A, C] f32 class probabilities in [0, 1].
      max_det: number of output rows per image.
      iou_threshold: a box is suppressed by a kept one when IoU > this.
      conf_threshold: candidates need score > this (so score 0 is never kept for thresholds
        >= 0).
      pre_nms_topk: only the top min(pre_nms_topk, A) anchors by score enter NMS (cost is
        quadratic in this).
      class_agnostic: if True boxes of different classes suppress each other too.
    Returns:
      Detections with [B, max_det, ...] fields, sorted by descending score, padding rows zero
      with class -1 and valid False.
    """
    if max_det < 1 or pre_nms_topk < 1:
        raise ValueError(f"nms: max_det ({max_det}) and pre_nms_topk ({pre_nms_topk}) must be >= 1")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3:
        raise ValueError(
            f"nms: want boxes [B, A, 4], scores [B, A, C]; got {boxes.shape}, {scores.shape}"
        )
    if boxes.shape[:2] != scores.shape[:2]:
        raise ValueError(f"nms: boxes {boxes.shape} and scores {scores.shape} disagree on [B, A]")

    def single(b, s):
        return _nms_single(
            b,
            s,
            iou_threshold,
            conf_threshold,
            max_det=max_det,
            pre_nms_topk=pre_nms_topk,
            class_agnostic=class_agnostic,
        )

    return jax.vmap(single)(boxes, scores)


def postprocess(
    outputs: Mapping[str, jax.Array],
    *,
    max_det: int = 100,
    iou_threshold: float | jax.Array = 0.45,
    conf_threshold: float | jax.Array = 0.25,
    pre_nms_topk: int = 1000,
    class_agnostic: bool = False,
) -> Detections:
    """RefDet `detect` outputs → Detections in letterboxed-input pixels.

    Args:
      outputs: dict with ``dist`` [B, A, 4, R] f32 bin logits, ``cls`` [B, A, N] f32 logits
        (padded ways hold -1e9), ``anchors`` [A, 2] f32 grid units, ``strides`` [A, 1] f32.
        Other keys are ignored.
      max_det, iou_threshold, conf_threshold, pre_nms_topk, class_agnostic: as in `nms`.
    Returns:
      Detections [B, max_det, ...]; classes are way indices.
    """
    boxes = decode_boxes(outputs["dist"], outputs["anchors"], outputs["strides"])
    # sigmoid(-1e9) is exactly 0, so padded ways never pass a threshold >= 0.
    scores = jax.nn.sigmoid(outputs["cls"].astype(jnp.float32))  # [B, A, N]
    return nms(
        boxes,
        scores,
        max_det=max_det,
        iou_threshold=iou_threshold,
        conf_threshold=conf_threshold,
        pre_nms_topk=pre_nms_topk,
        class_agnostic=class_agnostic,
    )


def to_array(det: Detections) -> jax.Array:
    """Detections → [B, max_det, 6] f32 rows (x1, y1, x2, y2, score, class).

    Padding rows are (0, 0, 0, 0, 0, -1); use ``det.valid`` [B, max_det] bool as the mask.
    """
    return jnp.concatenate(
        [det.boxes, det.scores[..., None], det.classes[..., None].astype(jnp.float32)], axis=-1
    )
