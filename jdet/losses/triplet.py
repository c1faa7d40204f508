"""Triplet losses with cosine distance d = 1 − cos (margin 0.3), plain and batch-hard.

Batch-hard mining follows Hermans et al. 2017, "In Defense of the Triplet Loss". Cosine
distance needs no sqrt, so identical embeddings (the batch-hard diagonal) are safe; zero
embeddings are normalised with a clamped norm (docs/losses.md §7.1).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jdet.dtypes import l2_normalize
from jdet.losses.contrastive import _masked_mean


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """1 − cos(a, b) for [..., D] × [..., D] → [...], finite for zero vectors."""
    return 1.0 - jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def triplet_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    margin: float = 0.3,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean of relu(d(a, p) − d(a, n) + margin) over valid triplets.

    Args:
      anchor, positive, negative: [N, D] f32; mask: [N] bool (default all); margin: 0.3.
    Returns:
      [] f32 (0 if no valid triplet).
    """
    chex.assert_equal_shape([anchor, positive, negative])
    chex.assert_rank(anchor, 2)
    n = anchor.shape[0]
    mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    per = jax.nn.relu(
        cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin
    )
    return _masked_mean(per, mask.astype(jnp.float32))


def batch_hard_triplet_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    margin: float = 0.3,
) -> jax.Array:
    """Batch-hard triplet loss: hardest positive and hardest negative per anchor.

    For each valid anchor i: ``relu(max_{j≠i, y_j=y_i} d_ij − min_{y_j≠y_i} d_ij + margin)``,
    averaged over the anchors that have both a positive and a negative; 0 if none.

    Args:
      embeddings: [N, D] f32; labels: [N] i32; mask: [N] bool (default all); margin: 0.3.
    Returns:
      [] f32.
    """
    chex.assert_rank(embeddings, 2)
    n = embeddings.shape[0]
    chex.assert_shape(labels, (n,))
    mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    z = l2_normalize(embeddings)
    dist = 1.0 - z @ z.T  # [N, N]
    valid = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)
    same = labels[:, None] == labels[None, :]
    pos = valid & same
    neg = valid & ~same
    hardest_pos = jnp.where(pos, dist, -jnp.inf).max(-1)
    hardest_neg = jnp.where(neg, dist, jnp.inf).min(-1)
    rows = mask & pos.any(-1) & neg.any(-1)
    per = jax.nn.relu(
        jnp.where(rows, hardest_pos, 0.0) - jnp.where(rows, hardest_neg, 0.0) + margin
    )
    return _masked_mean(per, rows.astype(jnp.float32))
