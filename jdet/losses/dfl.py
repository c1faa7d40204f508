"""Distribution focal loss (Li et al. 2020, GFL), per side, with float targets.

Follows ultralytics/utils/loss.py `DFLoss`: the target distance y (in bins) is split between
its two nearest bins with weights (⌊y⌋+1−y, y−⌊y⌋), and the loss is the cross-entropy of the
predicted bin distribution against that two-hot target. The original project cast y to int
(no interpolation) and used −log(softmax + 1e-7); here y stays float and the log comes from
`log_softmax` (docs/losses.md §7.5, §7.10).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jdet.dtypes import at_least_f32


def dfl_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Per-side DFL.

    Args:
      logits: [..., 4, R] f32 bin logits (R bins, values 0 … R−1).
      target: [..., 4] f32 distances in bins; clipped to [0, R − 1 − 0.01] here so the right
        bin exists (bbox2dist already clips the same way).
    Returns:
      [..., 4] f32 loss per side (reduce over sides and boxes outside).
    """
    chex.assert_rank(logits, target.ndim + 1)
    chex.assert_equal_shape_prefix([logits, target], target.ndim)
    num_bins = logits.shape[-1]
    y = jnp.clip(at_least_f32(target), 0.0, num_bins - 1 - 0.01)
    left = jnp.floor(y)
    w_right = y - left
    w_left = 1.0 - w_right
    left_i = jnp.clip(left.astype(jnp.int32), 0, num_bins - 2)  # int only for indexing
    logp = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
    lp_left = jnp.take_along_axis(logp, left_i[..., None], axis=-1)[..., 0]
    lp_right = jnp.take_along_axis(logp, left_i[..., None] + 1, axis=-1)[..., 0]
    return -(w_left * lp_left + w_right * lp_right)


def dfl_expectation(logits: jax.Array) -> jax.Array:
    """Expected distance in bins from bin logits: [..., R] → [...] f32, in [0, R − 1]."""
    probs = jax.nn.softmax(at_least_f32(logits), axis=-1)
    return probs @ jnp.arange(logits.shape[-1], dtype=probs.dtype)
