"""Detection loss terms from head outputs and padded targets; the one place weights apply.

`loss_terms` follows ultralytics/utils/loss.py `v8DetectionLoss` (8.3): decode the DFL
expectation to boxes, assign on detached predictions, then

    S   = max(Σ target_scores, 1)
    cls = Σ BCE(logits, target_scores) / S
    box = Σ_fg box_loss · w_a / S,   w_a = Σ_c target_scores[a, c]
    dfl = Σ_fg reduce_sides(DFL) · w_a / S

and adds the contrastive terms when the outputs carry embeddings. Terms are **unweighted**;
`weighted_total` applies `config.loss` gains. ultralytics multiplies its weighted sum by the
batch size before backward; jdet does not (the terms are batch means already), which only
rescales gradients before clipping and Adam's normalisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp

from jdet.assign import Assignment, center_assign, task_aligned_assign
from jdet.boxes import bbox2dist, bbox_iou, dist2bbox
from jdet.dtypes import at_least_f32
from jdet.losses.box import WIoUState, ciou_loss, wiou_loss
from jdet.losses.cls import cls_loss
from jdet.losses.contrastive import (
    NEG,
    cpe_loss,
    prototype_ce_from_cosine,
    prototype_contrastive_loss,
    supcon_loss,
)
from jdet.losses.dfl import dfl_expectation, dfl_loss
from jdet.losses.triplet import batch_hard_triplet_loss

TERM_NAMES = ("box", "cls", "dfl", "supcon", "cpe", "triplet")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss settings (hashable: safe as a jit static argument).

    The defaults are the original RefDet's choices (docs/original.md §3): 17 DFL bins summed over
    the 4 sides, Wise-IoU v2 with α 1.7 / δ 2.7 / μ 0.01, task-aligned assignment (jdet's fix
    of the original's centre rule). `LossConfig.ultralytics()` gives v8DetectionLoss parity.
    """

    num_bins: int = 17  # R: DFL bins per side, values 0 … R−1
    dfl_reduction: Literal["sum", "mean"] = "sum"  # over the 4 sides
    box_loss: Literal["ciou", "wiou"] = "wiou"
    wiou_variant: Literal["v1", "v2", "v3"] = "v2"
    wiou_alpha: float = 1.7
    wiou_delta: float = 2.7
    wiou_momentum: float = 0.01
    assigner: Literal["tal", "center"] = "tal"
    topk: int = 10
    tal_alpha: float = 0.5
    tal_beta: float = 6.0
    supcon_mode: Literal["prototype", "supcon"] = "prototype"
    supcon_temperature: float = 0.07
    cpe_variant: Literal["simplified", "full", "fsce"] = "simplified"
    cpe_temperature: float = 0.1
    cpe_iou_threshold: float = 0.5
    cpe_reweight: Literal["none", "linear", "exp"] = "none"
    triplet_margin: float = 0.3
    max_contrast_per_image: int = 32  # fg anchors sampled per image for supcon/cpe

    def __post_init__(self):
        if self.num_bins < 2:
            raise ValueError(f"LossConfig.num_bins must be >= 2, got {self.num_bins}")
        choices = dict(
            dfl_reduction=("sum", "mean"),
            box_loss=("ciou", "wiou"),
            wiou_variant=("v1", "v2", "v3"),
            assigner=("tal", "center"),
            supcon_mode=("prototype", "supcon"),
            cpe_variant=("simplified", "full", "fsce"),
            cpe_reweight=("none", "linear", "exp"),
        )
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"LossConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )

    @classmethod
    def ultralytics(cls, **overrides) -> "LossConfig":
        """ultralytics v8DetectionLoss: 16 bins averaged over sides, 1 − CIoU."""
        return cls(**{**dict(num_bins=16, dfl_reduction="mean", box_loss="ciou"), **overrides})


def weighted_total(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """Σ weights[k] · terms[k]: the one place loss gains are applied.

    Every term must have a gain (0 switches a term off), so a missing or misspelt gain fails
    loudly instead of silently dropping a term.
    """
    missing = [k for k in terms if k not in weights]
    if missing:
        raise ValueError(
            f"no loss weight for term(s) {missing}; set config.loss.<name> (0 disables a term)"
        )
    return sum(jnp.asarray(weights[k], jnp.float32) * terms[k] for k in terms)


def _assign(cfg, cls_logits, pred_boxes_px, anchors_px, batch, class_mask):
    num_classes = cls_logits.shape[-1]
    if cfg.assigner == "tal":
        probs = jax.nn.sigmoid(jax.lax.stop_gradient(cls_logits))
        probs = jnp.where(class_mask[:, None, :], probs, 0.0)
        return task_aligned_assign(
            probs,
            jax.lax.stop_gradient(pred_boxes_px),
            anchors_px,
            batch["labels"],
            batch["boxes"],
            batch["box_mask"],
            topk=cfg.topk,
            alpha=cfg.tal_alpha,
            beta=cfg.tal_beta,
        )
    return center_assign(
        anchors_px, batch["labels"], batch["boxes"], batch["box_mask"], num_classes
    )


def _sample_foreground(assign: Assignment, k: int):
    """Indices of up to k foreground anchors per image, highest target score first.

    Returns: idx [B, k] i32, valid [B, k] bool.
    """
    num_anchors = assign.fg_mask.shape[1]
    k = min(k, num_anchors)
    score = jnp.where(assign.fg_mask, assign.scores.sum(-1) + 1.0, 0.0)  # fg always ranks first
    top, idx = jax.lax.top_k(score, k)
    return idx, top > 0


def _take(x, idx):
    """Gather along the anchor axis: x [B, A, ...], idx [B, k] → [B, k, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def loss_terms(
    outputs: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    cfg: LossConfig = LossConfig(),
    wiou_state: WIoUState | None = None,
    train: bool = True,
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Unweighted loss terms of a detection batch.

    Args:
      outputs: head outputs
        dist:    [B, A, 4, R] f32 DFL bin logits (sides l, t, r, b);
        cls:     [B, A, C] f32 class logits (C = support ways for the prototype head);
        anchors: [A, 2] f32 anchor points in grid units; strides: [A, 1] f32 pixels;
        optional, for the contrastive terms:
        embed:      [B, A, D] per-anchor embeddings (supcon/cpe on sampled fg anchors);
        proto_cos:  [B, A, C] cosine of each anchor with each way's prototype (prototype
                    contrastive; preferred over ``prototypes`` when both are given);
        prototypes: [B, N=C, D] support prototypes, same width as embed (prototype contrastive);
        triplet_embed [T, D], triplet_labels [T] i32, triplet_mask [T] bool (batch-hard).
      batch: boxes [B, M, 4] f32 xyxy pixels; labels [B, M] i32 (way index); box_mask [B, M]
        bool; optional support_mask [B, C] bool (padded ways: excluded from cls and
        contrastive terms); optional class_ids [B, C] i32 global class id per way, so
        contrastive positives are the same object across images (default: the way index).
      cfg: LossConfig (static).
      wiou_state: running mean for Wise-IoU (default a fresh one).
      train: update the Wise-IoU mean.

    Returns:
      terms: {"box", "cls", "dfl"} plus "supcon", "cpe" when ``embed`` is given and "triplet"
        when ``triplet_embed`` is; all [] f32.
      aux: {"wiou_state": WIoUState, "num_fg": [] i32, "target_score_sum": [] f32,
        "assignment": Assignment}.
    """
    dist = at_least_f32(outputs["dist"])
    cls_logits = at_least_f32(outputs["cls"])
    anchors, strides = outputs["anchors"], outputs["strides"]
    bsz, num_anchors, _, num_bins = dist.shape
    num_classes = cls_logits.shape[-1]
    chex.assert_shape(dist, (bsz, num_anchors, 4, cfg.num_bins))
    chex.assert_shape(cls_logits, (bsz, num_anchors, num_classes))
    chex.assert_shape(anchors, (num_anchors, 2))
    chex.assert_shape(strides, (num_anchors, 1))
    m = batch["boxes"].shape[1]
    chex.assert_shape(batch["boxes"], (bsz, m, 4))
    chex.assert_shape([batch["labels"], batch["box_mask"]], (bsz, m))
    class_mask = batch.get("support_mask")
    class_mask = (
        jnp.ones((bsz, num_classes), bool) if class_mask is None else class_mask.astype(bool)
    )
    chex.assert_shape(class_mask, (bsz, num_classes))
    wiou_state = WIoUState.init() if wiou_state is None else wiou_state

    ltrb = dfl_expectation(dist)  # [B, A, 4] grid units
    pred_boxes = dist2bbox(ltrb, anchors[None])  # [B, A, 4] grid units
    # Padded ways can never be predicted: their logits only enter the assigner as prob 0 and
    # are excluded from BCE.
    assign = _assign(
        cfg, cls_logits, pred_boxes * strides[None], anchors * strides, batch, class_mask
    )
    target_boxes = assign.boxes / strides[None]  # [B, A, 4] grid units
    fg = assign.fg_mask
    score_sum = jnp.maximum(assign.scores.sum(), 1.0)
    weight = assign.scores.sum(-1)  # [B, A]

    terms: dict[str, jax.Array] = {}
    terms["cls"] = cls_loss(cls_logits, assign.scores, class_mask)

    # Safe targets for background anchors (their loss is masked; docs/losses.md §7.2).
    fg3 = fg[..., None]
    safe_target = jnp.where(fg3, target_boxes, jnp.concatenate([anchors - 1, anchors + 1], -1))
    safe_pred = jnp.where(fg3, pred_boxes, jnp.concatenate([anchors - 1, anchors + 1], -1))
    if cfg.box_loss == "ciou":
        per_box = jnp.where(fg, ciou_loss(safe_pred, safe_target), 0.0)
    else:
        per_box, wiou_state = wiou_loss(
            safe_pred,
            safe_target,
            fg,
            wiou_state,
            variant=cfg.wiou_variant,
            alpha=cfg.wiou_alpha,
            delta=cfg.wiou_delta,
            momentum=cfg.wiou_momentum,
            train=train,
        )
    terms["box"] = (per_box * weight).sum() / score_sum

    dfl_target = bbox2dist(anchors[None], safe_target, num_bins - 1)  # [B, A, 4] bins
    per_side = dfl_loss(dist, dfl_target)  # [B, A, 4]
    per_anchor = per_side.sum(-1) if cfg.dfl_reduction == "sum" else per_side.mean(-1)
    terms["dfl"] = jnp.where(fg, per_anchor * weight, 0.0).sum() / score_sum

    if "embed" in outputs:
        terms.update(
            _contrastive_terms(outputs, batch, cfg, assign, pred_boxes, target_boxes, class_mask)
        )
    if "triplet_embed" in outputs:
        terms["triplet"] = batch_hard_triplet_loss(
            at_least_f32(outputs["triplet_embed"]),
            outputs["triplet_labels"],
            outputs.get("triplet_mask"),
            margin=cfg.triplet_margin,
        )
    aux = dict(
        wiou_state=wiou_state,
        num_fg=fg.sum().astype(jnp.int32),
        target_score_sum=assign.scores.sum(),
        assignment=assign,
    )
    return terms, aux


def _contrastive_terms(outputs, batch, cfg, assign, pred_boxes, target_boxes, class_mask):
    """supcon (prototype CE or SupCon) and CPE on up to k fg anchors per image."""
    embed = at_least_f32(outputs["embed"])  # [B, A, D]
    idx, valid = _sample_foreground(assign, cfg.max_contrast_per_image)  # [B, k]
    feats = _take(embed, idx)  # [B, k, D]
    ways = _take(assign.labels, idx)  # [B, k]
    valid = valid & jnp.take_along_axis(class_mask, ways, axis=1)
    ious = bbox_iou(_take(pred_boxes, idx), _take(target_boxes, idx), kind="iou")
    ious = jnp.where(valid, jax.lax.stop_gradient(ious), 0.0)
    class_ids = batch.get("class_ids")
    global_ids = ways if class_ids is None else jnp.take_along_axis(class_ids, ways, axis=1)

    terms = {}
    if cfg.supcon_mode == "prototype" and "proto_cos" in outputs:
        terms["supcon"] = prototype_ce_from_cosine(
            _take(at_least_f32(outputs["proto_cos"]), idx),
            ways,
            valid,
            class_mask,
            temperature=cfg.supcon_temperature,
        )
    elif cfg.supcon_mode == "prototype" and "prototypes" in outputs:
        terms["supcon"] = prototype_contrastive_loss(
            feats,
            at_least_f32(outputs["prototypes"]),
            ways,
            valid,
            class_mask,
            temperature=cfg.supcon_temperature,
        )
    else:
        terms["supcon"] = supcon_loss(
            feats.reshape(-1, feats.shape[-1]),
            global_ids.reshape(-1),
            valid.reshape(-1),
            temperature=cfg.supcon_temperature,
        )
    terms["cpe"] = cpe_loss(
        feats.reshape(-1, feats.shape[-1]),
        global_ids.reshape(-1),
        ious.reshape(-1),
        valid.reshape(-1),
        temperature=cfg.cpe_temperature,
        variant=cfg.cpe_variant,
        iou_threshold=cfg.cpe_iou_threshold,
        reweight=cfg.cpe_reweight,
    )
    return terms


__all__ = ["LossConfig", "TERM_NAMES", "loss_terms", "weighted_total", "NEG"]
