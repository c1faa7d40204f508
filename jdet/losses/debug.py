"""Debug variants of the losses: value assertions that run inside jit.

`checked(fn)` wraps any loss function so that, under `chex.chexify(async_check=False)`, a
non-finite input or output raises at once, naming the function. It costs about 2× on small
ops (DESIGN.md §1), so the trainer uses it only with ``debug.check_nans``; the hot loop relies
on `optax.apply_if_finite` and host-side checks at log steps.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax

from jdet.grads import per_term_grads
from jdet.losses import detection


def checked(fn: Callable, *, check_inputs: bool = True, **jit_kwargs) -> Callable:
    """jit(fn) with chexified finiteness checks on the floating inputs and on the outputs."""

    def body(*args, **kwargs):
        if check_inputs:
            floats = [x for x in jax.tree.leaves((args, kwargs)) if _is_float(x)]
            chex.assert_tree_all_finite(floats, custom_message=f"non-finite input to {fn.__name__}")
        out = fn(*args, **kwargs)
        floats = [x for x in jax.tree.leaves(out) if _is_float(x)]
        chex.assert_tree_all_finite(floats, custom_message=f"non-finite output of {fn.__name__}")
        return out

    body.__name__ = f"checked_{fn.__name__}"
    return chex.chexify(jax.jit(body, **jit_kwargs), async_check=False)


def _is_float(x) -> bool:
    return hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)


def checked_per_term_grads(terms_fn: Callable, **jit_kwargs) -> Callable:
    """`per_term_grads(terms_fn, params, *args)` under jit, asserting every term and every
    per-term gradient is finite (the seed's batch-0 check, as an exception)."""

    def grads_of(params, *args):
        return per_term_grads(terms_fn, params, *args)

    grads_of.__name__ = f"per_term_grads_{getattr(terms_fn, '__name__', 'terms')}"
    return checked(grads_of, check_inputs=True, **jit_kwargs)


checked_loss_terms = checked(detection.loss_terms, static_argnames=("cfg", "train"))
