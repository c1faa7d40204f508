"""Precision policy: losses and assignment compute in float32 at least (LOSSES.md §8.12).

bf16/f16 model outputs are promoted to float32 (1 − 1e-6 rounds to 1 in bf16, and exp/log
lose the clamps); float64 stays float64, so parity tests can run under `enable_x64`.
"""

import jax
import jax.numpy as jnp


def at_least_f32(x: jax.Array) -> jax.Array:
    """x as float32, or kept as is when it is already float32/float64."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
