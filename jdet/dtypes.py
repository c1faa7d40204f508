"""Precision policy: losses and assignment compute in float32 at least (docs/losses.md §7.12);
`l2_normalize`, the one unit-norm function of losses and models.

bf16/f16 model outputs are promoted to float32 (1 − 1e-6 rounds to 1 in bf16, and exp/log
lose the clamps); float64 stays float64, so parity tests can run under `enable_x64`.
"""

import jax
import jax.numpy as jnp


def at_least_f32(x: jax.Array) -> jax.Array:
    """x as float32, or kept as is when it is already float32/float64."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(
    x: jax.Array, axis: int = -1, eps: float = 1e-12, *, keep_dtype: bool = False
) -> jax.Array:
    """``x / max(‖x‖, eps)`` along `axis` (torch ``F.normalize``), computed in float32 at least.

    Written as ``x · rsqrt(max(Σx², eps²))`` so that the gradient at x = 0 is finite (zero), not
    NaN (docs/losses.md §7.1): padded, all-zero prototypes must not poison the backward pass.
    Returns float32 at least (what the losses use), or x's dtype with `keep_dtype` (models).
    """
    x32 = at_least_f32(x)
    sq = jnp.sum(x32 * x32, axis=axis, keepdims=True)
    out = x32 * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
    return out.astype(jnp.asarray(x).dtype) if keep_dtype else out
