"""Contrastive terms: SupCon, prototype contrastive and CPE, NaN-free by construction.

SupCon follows Khosla et al. 2020 ("Supervised Contrastive Learning") and the authors' code
(HobbitLong/SupContrast `losses.py`); CPE follows Sun et al. 2021 (FSCE, megvii-research/FSCE
`contrastive_loss.py`) and the original project's simplified/full variants (docs/original.md §3,
docs/losses.md §5).

Every log-sum-exp here runs over exactly the set it sums (valid entries only: masked entries
are filled with a large finite negative and double-`where`d) and is shifted by the max *of
that set*, so the shifted sum is ≥ 1 whenever the set is non-empty. The 1e-6 clamp before the
log (clamp, never ``+eps``; logits are never clamped: docs/losses.md §7.2–§7.4, §7.8) then only
guards empty sets, whose rows are excluded from the mean.

Why not the references' shift: SupContrast, FSCE and the original subtract the row max
*including self* (z_i·z_i/τ = 1/τ) and the original then clamps Σ_{j≠i} at 1e-6. At τ = 0.07
that sum is Σ_j e^{(cos_ij − 1)/τ}, below 1e-6 for a few samples with cosines ≤ 0 (each term
is ≤ 6.2e-7): the clamp then silently changes the loss (4.30 instead of 3.88 on the SupContrast
fixture with 6 samples; 5.23 instead of ln 3 for a tetrahedron) and zeroes the denominator's
gradient. Shifting by the set's own max is the same function wherever the reference's clamp
is inactive (the parity fixtures) and the exact one where it is not.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

from jdet.dtypes import at_least_f32, l2_normalize

NEG = -1e9  # finite "minus infinity" for masked logits (f32; never use in float16)
LOG_CLAMP = 1e-6


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ values·w / max(Σ w, 1) with `where`, so masked NaN-free zeros stay zero."""
    total = jnp.where(weights > 0, values * weights, 0.0).sum()
    return total / jnp.maximum(weights.sum(), 1.0)


def _masked_logsumexp(logits: jax.Array, include: jax.Array) -> jax.Array:
    """log Σ_{j ∈ include} exp(logits_j) per row, shifted by the set's own (stop-gradient) max.

    The shifted sum is ≥ 1 for a non-empty set, so the 1e-6 clamp binds only on empty rows,
    which give a large finite negative (callers exclude those rows).
    """
    filled = jnp.where(include, logits, NEG)
    row_max = jax.lax.stop_gradient(filled.max(-1))
    shifted = jnp.where(include, logits - row_max[..., None], 0.0)
    total = jnp.where(include, jnp.exp(shifted), 0.0).sum(-1)
    return row_max + jnp.log(jnp.maximum(total, LOG_CLAMP))


def supcon_loss(
    features: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    mode: Literal["jdet", "reference"] = "jdet",
) -> jax.Array:
    """Supervised contrastive loss (SupCon, "all" contrast mode) over N samples.

    ``ℓ_i = −(τ/τ_b)·mean_{p∈P(i)} [s_ip − log Σ_{a∈A(i)} e^{s_ia}]`` with ``s = z·zᵀ/τ``,
    A(i) the other valid samples, P(i) those with label y_i; the log-sum-exp is shifted by
    the max over A(i) (module docstring).

    Args:
      features: [N, D] f32 (L2-normalised here, safely).
      labels: [N] i32.
      mask: [N] bool, valid samples (default all).
      temperature, base_temperature: τ and τ_b (0.07, 0.07).
      mode: "jdet" averages over valid anchors that have a positive; "reference" reproduces
        SupContrast, where anchors without positives count 0 in a mean over all valid anchors.

    Returns:
      [] f32; 0 when no anchor qualifies.
    """
    chex.assert_rank(features, 2)
    chex.assert_shape(labels, features.shape[:1])
    n = features.shape[0]
    mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    z = l2_normalize(features)
    logits = (z @ z.T) / temperature  # [N, N]
    not_self = ~jnp.eye(n, dtype=bool)
    others = mask[:, None] & mask[None, :] & not_self  # A(i)
    positives = others & (labels[:, None] == labels[None, :])  # P(i)
    log_denom = _masked_logsumexp(logits, others)  # [N]
    n_pos = positives.sum(-1)
    log_prob_pos = jnp.where(positives, logits - log_denom[:, None], 0.0).sum(-1)
    mean_log_prob = log_prob_pos / jnp.maximum(n_pos, 1)
    per_anchor = -(temperature / base_temperature) * mean_log_prob  # [N]
    if mode == "jdet":
        rows = mask & (n_pos > 0)
    elif mode == "reference":
        rows = mask
    else:
        raise ValueError(f"supcon_loss: mode must be jdet|reference, got {mode!r}")
    return _masked_mean(per_anchor, rows.astype(jnp.float32))


def prototype_contrastive_loss(
    queries: jax.Array,
    prototypes: jax.Array,
    labels: jax.Array,
    query_mask: jax.Array,
    proto_mask: jax.Array | None = None,
    temperature: float = 0.07,
) -> jax.Array:
    """Cross-entropy of cosine(query, prototypes)/τ against each query's class.

    The original's stage-2 "supcon" when prototypes exist (docs/original.md §3). Padded
    prototypes get a large negative finite logit, never −inf.

    Args:
      queries: [..., Q, D] f32 query embeddings; prototypes: [..., N, D] f32.
      labels: [..., Q] i32 in [0, N); query_mask: [..., Q] bool.
      proto_mask: [..., N] bool, real prototypes (default all).
      temperature: τ (0.07).

    Returns:
      [] f32 mean over valid queries (0 if none).
    """
    chex.assert_rank(queries, prototypes.ndim)
    cosine = jnp.einsum("...qd,...nd->...qn", l2_normalize(queries), l2_normalize(prototypes))
    return prototype_ce_from_cosine(cosine, labels, query_mask, proto_mask, temperature)


def prototype_ce_from_cosine(
    cosine: jax.Array,
    labels: jax.Array,
    query_mask: jax.Array,
    proto_mask: jax.Array | None = None,
    temperature: float = 0.07,
) -> jax.Array:
    """`prototype_contrastive_loss` from precomputed cosines [..., Q, N] (e.g. a model's
    prototype head, whose prototype widths differ per scale)."""
    num_protos = cosine.shape[-1]
    if proto_mask is None:
        proto_mask = jnp.ones(cosine.shape[:-2] + (num_protos,), bool)
    logits = jnp.where(proto_mask[..., None, :], at_least_f32(cosine) / temperature, NEG)
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.clip(labels, 0, num_protos - 1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    label_real = jnp.take_along_axis(proto_mask, labels, axis=-1)
    valid = query_mask.astype(bool) & label_real
    return _masked_mean(nll, valid.astype(jnp.float32))


CPEVariant = Literal["simplified", "full", "fsce"]
Reweight = Literal["none", "linear", "exp"]


def cpe_loss(
    features: jax.Array,
    labels: jax.Array,
    ious: jax.Array,
    mask: jax.Array | None = None,
    *,
    temperature: float = 0.1,
    variant: CPEVariant = "simplified",
    iou_threshold: float = 0.5,
    reweight: Reweight = "none",
) -> jax.Array:
    """Contrastive proposal encoding loss.

    Variants (docs/losses.md §5):
      - "simplified" (the original's default): per valid anchor with ≥1 positive (same label,
        j ≠ i), ``−log(Σ_pos e^s / Σ_{pos∪neg} e^s)``, each log-sum-exp shifted by its own set's
        max (the original shares the pos ∪ neg max and clamps both sums at 1e-6, which binds
        when every positive sits ≥ 13.8·τ below the best negative); mean over such anchors.
      - "full" (the original's): positives need the same label, both IoUs > iou_threshold and
        |ΔIoU| < 0.2; negatives are other labels; rows need ≥1 positive and ≥1 negative.
      - "fsce" (FSCE paper/code): every valid proposal (background with its own label) in the
        denominator, anchors = proposals with IoU ≥ iou_threshold, ``−Σ_p log p_ip /
        (|P(i)|+1)`` (self counted, as FSCE), re-weighted by f(IoU_i) ∈ {1, IoU, e^IoU − 1}.

    Args:
      features: [N, D] f32 (L2-normalised here); labels: [N] i32; ious: [N] f32 IoU of each
        proposal with its GT (stop-gradient); mask: [N] bool valid proposals.
      temperature: τ (0.1); iou_threshold: φ; reweight: f for "fsce".

    Returns:
      [] f32; 0 when no anchor qualifies.
    """
    chex.assert_rank(features, 2)
    n = features.shape[0]
    chex.assert_shape([labels, ious], (n,))
    mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    ious = jax.lax.stop_gradient(at_least_f32(ious))
    z = l2_normalize(features)
    logits = (z @ z.T) / temperature
    not_self = ~jnp.eye(n, dtype=bool)
    others = mask[:, None] & mask[None, :] & not_self
    same = labels[:, None] == labels[None, :]

    if variant in ("simplified", "full"):
        if variant == "simplified":
            pos = others & same
        else:
            both_good = (ious[:, None] > iou_threshold) & (ious[None, :] > iou_threshold)
            close = jnp.abs(ious[:, None] - ious[None, :]) < 0.2
            pos = others & same & both_good & close
        neg = others & ~same
        pos_or_neg = pos | neg
        per_anchor = _masked_logsumexp(logits, pos_or_neg) - _masked_logsumexp(logits, pos)
        rows = mask & pos.any(-1)
        if variant == "full":
            rows = rows & neg.any(-1)
        return _masked_mean(per_anchor, rows.astype(jnp.float32))

    if variant == "fsce":
        valid_pair = mask[:, None] & mask[None, :]
        log_denom = _masked_logsumexp(logits, others)
        pos = others & same
        n_label = (valid_pair & same).sum(-1)  # |P(i)| + 1
        log_prob = jnp.where(pos, logits - log_denom[:, None], 0.0).sum(-1)
        per_anchor = -log_prob / jnp.maximum(n_label, 1)
        if reweight == "none":
            coef = jnp.ones_like(ious)
        elif reweight == "linear":
            coef = ious
        elif reweight == "exp":
            coef = jnp.exp(ious) - 1.0
        else:
            raise ValueError(f"cpe_loss: reweight must be none|linear|exp, got {reweight!r}")
        rows = mask & (ious >= iou_threshold)
        return _masked_mean(per_anchor * coef, rows.astype(jnp.float32))

    raise ValueError(f"cpe_loss: variant must be simplified|full|fsce, got {variant!r}")
