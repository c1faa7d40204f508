"""Per-term gradients in one compiled call, and a gradient-health report.

The original trained with six loss terms and found its NaN gradients by back-propagating each
term alone on batch 0 (REFERENCE.md §4). Here `per_term_grads` takes one `jax.vjp` of the
vector of terms and `vmap`s the pull-back over the K one-hot cotangents: all K gradients in
one call, usable on any step. `grad_stats` reduces them to per-term health figures on device
and `format_grad_report` prints the ✓/✗ table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def per_term_grads(
    terms_fn: Callable[..., Any],
    params: PyTree,
    *args,
    has_aux: bool = False,
    method: str = "vmap",
) -> tuple[dict[str, jax.Array], dict[str, PyTree]] | tuple[dict, dict, Any]:
    """Gradient of every loss term w.r.t. params, in one call.

    method="vmap" (default): one `jax.vjp` of the stacked terms, its pull-back `vmap`ped over
    the K one-hot cotangents. method="separate": K `jax.grad` calls of one term each; under
    one jit XLA shares their forward pass, and each backward only walks its own term's graph,
    which is cheaper when the terms' graphs overlap little (`scripts/bench.py losses` measures
    both).

    Args:
      terms_fn: ``terms_fn(params, *args) -> {name: [] f32}`` (or ``(terms, aux)`` with
        ``has_aux=True``).
      params: the pytree to differentiate.
      *args: passed through to terms_fn.

    Returns:
      (terms, grads) or (terms, grads, aux): ``grads[name]`` is a pytree like params.

    One shared backward pass has one caveat: a term whose local derivative is infinite or NaN
    (sqrt at 0, say) puts ``0 · inf = NaN`` into *every* term's gradient, because the other
    rows' zero cotangents still flow through it. `diagnose` detects that and re-derives the
    non-finite terms one by one, so the blame lands on the right term.
    """
    names: list[str] = []

    def stacked(p):
        out = terms_fn(p, *args)
        terms, aux = out if has_aux else (out, None)
        if not isinstance(terms, Mapping) or not terms:
            raise TypeError("per_term_grads: terms_fn must return a non-empty dict of scalars")
        names[:] = sorted(terms)
        vec = jnp.stack([jnp.asarray(terms[k], jnp.float32).reshape(()) for k in names])
        return vec, (terms, aux)

    if method not in ("vmap", "separate"):
        raise ValueError(f"per_term_grads: method must be vmap|separate, got {method!r}")
    _, pullback, (terms, aux) = jax.vjp(stacked, params, has_aux=True)
    if method == "vmap":
        (stacked_grads,) = jax.vmap(pullback)(jnp.eye(len(names), dtype=jnp.float32))
        grads = {
            name: jax.tree.map(lambda g, i=i: g[i], stacked_grads) for i, name in enumerate(names)
        }
    else:
        grads = {name: jax.grad(_single_term(terms_fn, name, has_aux))(params, *args) for name in names}
    return (terms, grads, aux) if has_aux else (terms, grads)


def _single_term(terms_fn, name, has_aux):
    def single(p, *args):
        res = terms_fn(p, *args)
        return (res[0] if has_aux else res)[name]

    return single


def grad_stats(grads: Mapping[str, PyTree]) -> dict[str, jax.Array]:
    """Device-side health figures for a dict of per-term gradients.

    Returns (all f32/bool arrays, terms in sorted-name order):
      names order is ``sorted(grads)``;
      finite [K] bool: every entry of that term's gradient is finite;
      norm [K]: global L2 norm (non-finite entries ignored, so a NaN term still shows scale);
      max_abs [K]: largest finite |g|;
      cosine [K, K]: cosine similarity between term gradients (0 where a norm is 0).
    """
    names = sorted(grads)
    leaves = [jax.tree.leaves(grads[k]) for k in names]
    finite = jnp.stack([jnp.all(jnp.stack([jnp.isfinite(x).all() for x in ls])) for ls in leaves])
    clean = [[jnp.where(jnp.isfinite(x), x, 0.0).astype(jnp.float32).ravel() for x in ls] for ls in leaves]
    flat = jnp.stack([jnp.concatenate(c) for c in clean])  # [K, P]
    gram = flat @ flat.T  # [K, K]
    norm = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    denom = norm[:, None] * norm[None, :]
    cosine = jnp.where(denom > 0, gram / jnp.where(denom > 0, denom, 1.0), 0.0)
    max_abs = jnp.abs(flat).max(-1)
    return dict(finite=finite, norm=norm, max_abs=max_abs, cosine=cosine)


def grad_report(
    terms: Mapping[str, jax.Array], grads: Mapping[str, PyTree], stats: Mapping | None = None
) -> dict[str, Any]:
    """Host-side JSON-able report: per term value, finite, norm, max |g|, cosines."""
    names = sorted(grads)
    stats = jax.device_get(grad_stats(grads) if stats is None else stats)
    values = jax.device_get({k: terms[k] for k in names})
    report: dict[str, Any] = {"terms": {}, "all_finite": True}
    for i, name in enumerate(names):
        value = float(values[name])
        ok = bool(stats["finite"][i]) and math.isfinite(value)
        report["all_finite"] &= ok
        report["terms"][name] = dict(
            value=value,
            value_finite=math.isfinite(value),
            grad_finite=bool(stats["finite"][i]),
            grad_norm=float(stats["norm"][i]),
            grad_max_abs=float(stats["max_abs"][i]),
            cosine={other: float(stats["cosine"][i][j]) for j, other in enumerate(names)},
        )
    return report


def format_grad_report(report: Mapping[str, Any]) -> str:
    """The seed's per-term check as a table: ✓/✗, value, gradient norm, max |g|, cosines."""
    names = list(report["terms"])
    short = [n[:7] for n in names]
    head = f"{'term':<9}{'ok':<4}{'value':>11}{'grad norm':>12}{'max |g|':>11}  " + "".join(
        f"{'cos ' + s:>12}" for s in short
    )
    lines = [head, "-" * len(head)]
    for name in names:
        t = report["terms"][name]
        ok = "✓" if t["value_finite"] and t["grad_finite"] else "✗"
        cos = "".join(f"{t['cosine'][o]:>12.3f}" for o in names)
        lines.append(
            f"{name:<9}{ok:<4}{t['value']:>11.4g}{t['grad_norm']:>12.4g}{t['grad_max_abs']:>11.4g}  {cos}"
        )
    verdict = "all terms finite" if report["all_finite"] else "NON-FINITE term(s): " + ", ".join(
        n for n in names if not (report["terms"][n]["value_finite"] and report["terms"][n]["grad_finite"])
    )
    lines.append(verdict)
    return "\n".join(lines)


def diagnose(
    terms_fn: Callable[..., Any],
    params: PyTree,
    *args,
    has_aux: bool = False,
    method: str = "vmap",
    compile_fn: Callable[..., Any] | None = None,
) -> tuple[dict[str, Any], dict[str, PyTree]]:
    """Per-term gradient check with attribution: the trainer's step-0 diagnostic.

    Runs `per_term_grads` under jit (one vjp, K cotangents). If any term's gradient is not
    finite, each such term is differentiated again on its own (jax.grad of that term only),
    so a NaN produced by one term is not blamed on the others that share its backward pass.

    Returns:
      (report, grads): the `grad_report` dict, with ``attribution`` = "shared" or "isolated",
      and the per-term gradients.

    compile_fn(jitted, *args, **kwargs) → compiled, if given, compiles each program before
    it runs (`jdet.distributed.compile_synchronized` in multi-process runs).
    """
    fast = jax.jit(per_term_grads, static_argnums=0, static_argnames=("has_aux", "method"))
    if compile_fn is None:
        out = fast(terms_fn, params, *args, has_aux=has_aux, method=method)
    else:
        out = compile_fn(fast, terms_fn, params, *args, has_aux=has_aux, method=method)(
            params, *args
        )
    terms, grads = out[0], dict(out[1])
    stats = jax.device_get(grad_stats(grads))
    attribution = "shared"
    if not bool(stats["finite"].all()):
        attribution = "isolated"
        names = sorted(grads)
        for i, name in enumerate(names):
            if bool(stats["finite"][i]):
                continue
            single = jax.jit(jax.grad(_single_term(terms_fn, name, has_aux)))
            if compile_fn is not None:
                single = compile_fn(single, params, *args)
            grads[name] = single(params, *args)
        stats = None
    report = grad_report(terms, grads, stats)
    report["attribution"] = attribution
    return report, grads
