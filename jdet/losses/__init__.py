"""jdet losses: every term finite in value and gradient on any input (docs/losses.md §7)."""

from jdet.dtypes import l2_normalize
from jdet.losses.box import WIoUState, ciou_loss, wiou_loss
from jdet.losses.cls import bce_with_logits, cls_loss
from jdet.losses.contrastive import cpe_loss, prototype_contrastive_loss, supcon_loss
from jdet.losses.detection import TERM_NAMES, LossConfig, loss_terms, weighted_total
from jdet.losses.dfl import dfl_expectation, dfl_loss
from jdet.losses.triplet import batch_hard_triplet_loss, cosine_distance, triplet_loss

__all__ = [
    "TERM_NAMES",
    "LossConfig",
    "WIoUState",
    "batch_hard_triplet_loss",
    "bce_with_logits",
    "ciou_loss",
    "cls_loss",
    "cosine_distance",
    "cpe_loss",
    "dfl_expectation",
    "dfl_loss",
    "l2_normalize",
    "loss_terms",
    "prototype_contrastive_loss",
    "supcon_loss",
    "triplet_loss",
    "weighted_total",
    "wiou_loss",
]
