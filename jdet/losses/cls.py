"""Classification loss: BCE with logits against soft targets (ultralytics v8DetectionLoss)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jdet.dtypes import at_least_f32


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy with logits, stable for any logit.

    ``max(x, 0) − x·t + log1p(exp(−|x|))`` (the form of torch's BCEWithLogits): finite value
    and gradient for logits of ±1e4 and beyond (docs/losses.md §7.5).

    Args:
      logits: [...] f32; targets: [...] f32 in [0, 1].
    Returns:
      [...] f32.
    """
    chex.assert_equal_shape([logits, targets])
    logits = at_least_f32(logits)
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def cls_loss(
    logits: jax.Array, target_scores: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Summed BCE over every anchor and class, divided by max(Σ target scores, 1).

    Args:
      logits: [B, A, C] f32 class logits.
      target_scores: [B, A, C] f32 soft targets from the assigner.
      mask: optional [B, C] or [B, A, C] bool: entries that count (padded support ways are
        excluded); default all.
    Returns:
      [] f32.
    """
    chex.assert_equal_shape([logits, target_scores])
    bce = bce_with_logits(logits, target_scores)
    if mask is not None:
        mask = mask[:, None, :] if mask.ndim == 2 else mask
        bce = jnp.where(mask, bce, 0.0)
    return bce.sum() / jnp.maximum(target_scores.sum(), 1.0)
