"""Per-term gradients in one compiled call, and a gradient-health report.

The original trained with six loss terms and found its NaN gradients by back-propagating each
term alone on batch 0 (docs/original.md §4). Here `per_term_grads` takes one `jax.vjp` of the
vector of terms and `vmap`s the pull-back over the K one-hot cotangents: all K gradients in
one call, usable on any step. `per_term_grads_by_weights` gets them instead from a program
the caller already has, one that takes the loss weights as arguments (the trainer's).
`grad_stats` reduces them to per-term health figures on the host,
`format_grad_report` prints the ✓/✗ table, and `diagnose` does it all, blaming a NaN on the
term that made it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
    the K one-hot cotangents. method="scan": the same pull-back mapped over the K cotangents
    one after another (`lax.map`): one backward pass in the program however many terms, so
    it traces and compiles about as fast as a train step (configs/tiny.py, 8 CPU devices:
    3 s trace + 41 s compile, against 12 s + 78 s for "separate") and it has no batching rule
    to miss (jax 0.10 cannot vmap the transpose of a grouped convolution under a sharding).
    method="separate": K `jax.grad` calls of one term each; under one jit XLA shares their
    forward pass, and each backward only walks its own term's graph, which is cheaper to run
    when the terms' graphs overlap little (`python -m benchmarks losses` measures the methods).

    Args:
      terms_fn: ``terms_fn(params, *args) -> {name: [] f32}`` (or ``(terms, aux)`` with
        ``has_aux=True``).
      params: the pytree to differentiate.
      *args: passed through to terms_fn.

    Returns:
      (terms, grads) or (terms, grads, aux): ``grads[name]`` is a pytree like params.

    One shared backward pass ("vmap", "scan") has one caveat: a term whose local derivative
    is infinite or NaN (sqrt at 0, say) puts ``0 · inf = NaN`` into *every* term's gradient,
    because the other rows' zero cotangents still flow through it. `diagnose` detects that
    and derives those terms again without it, so the blame lands on the right term.
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

    if method not in ("vmap", "scan", "separate"):
        raise ValueError(f"per_term_grads: method must be vmap|scan|separate, got {method!r}")
    _, pullback, (terms, aux) = jax.vjp(stacked, params, has_aux=True)
    if method in ("vmap", "scan"):
        rows = jnp.eye(len(names), dtype=jnp.float32)
        if method == "vmap":
            (stacked_grads,) = jax.vmap(pullback)(rows)
        else:
            (stacked_grads,) = jax.lax.map(pullback, rows)
        grads = {
            name: jax.tree.map(lambda g, i=i: g[i], stacked_grads) for i, name in enumerate(names)
        }
    else:
        grads = {
            name: jax.grad(_single_term(terms_fn, name, has_aux))(params, *args) for name in names
        }
    return (terms, grads, aux) if has_aux else (terms, grads)


def _single_term(terms_fn, name, has_aux):
    def single(p, *args):
        res = terms_fn(p, *args)
        return (res[0] if has_aux else res)[name]

    return single


def grad_stats(grads: Mapping[str, PyTree]) -> dict[str, np.ndarray]:
    """Health figures for a dict of per-term gradients, computed on the host with NumPy.

    Returns (terms in ``sorted(grads)`` order):
      finite [K] bool: every entry of that term's gradient is finite;
      norm [K] f32: global L2 norm (non-finite entries ignored, so a NaN term still shows
        scale);
      max_abs [K] f32: largest finite |g|;
      cosine [K, K] f32: cosine similarity between term gradients (0 where a norm is 0).

    One device-to-host copy of each term's gradient, then leaf by leaf: no program to compile
    (the same figures as a jitted function took XLA:CPU 17 s to compile for the quickstart's
    model, for its ~4 ops per parameter leaf).
    """
    names = sorted(grads)
    host = [jax.tree.leaves(jax.device_get(grads[k])) for k in names]
    k = len(names)
    finite = np.ones((k,), bool)
    gram = np.zeros((k, k), np.float64)
    max_abs = np.zeros((k,), np.float32)
    for leaf in zip(*host):  # K gradients of each leaf
        x = np.stack([np.asarray(g, np.float32).reshape(-1) for g in leaf])  # [K, n]
        ok = np.isfinite(x)
        finite &= ok.all(-1)
        x = np.where(ok, x, np.float32(0.0))
        gram += (x @ x.T).astype(np.float64)
        if x.size:
            max_abs = np.maximum(max_abs, np.abs(x).max(-1))
    norm = np.sqrt(np.maximum(np.diag(gram), 0.0))
    denom = norm[:, None] * norm[None, :]
    cosine = np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), 0.0)
    return dict(
        finite=finite,
        norm=norm.astype(np.float32),
        max_abs=max_abs,
        cosine=cosine.astype(np.float32),
    )


def grad_report(
    terms: Mapping[str, jax.Array], grads: Mapping[str, PyTree], stats: Mapping | None = None
) -> dict[str, Any]:
    """Host-side JSON-able report: per term value, finite, norm, max |g|, cosines."""
    names = sorted(grads)
    stats = grad_stats(grads) if stats is None else stats
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
            f"{name:<9}{ok:<4}{t['value']:>11.4g}{t['grad_norm']:>12.4g}"
            f"{t['grad_max_abs']:>11.4g}  {cos}"
        )
    verdict = (
        "all terms finite"
        if report["all_finite"]
        else "NON-FINITE term(s): "
        + ", ".join(
            n
            for n in names
            if not (report["terms"][n]["value_finite"] and report["terms"][n]["grad_finite"])
        )
    )
    lines.append(verdict)
    return "\n".join(lines)


def per_term_grads_by_weights(
    weighted_grads: Callable[[dict[str, jax.Array]], tuple[Any, PyTree]],
    names: Sequence[str],
) -> tuple[dict[str, jax.Array], dict[str, PyTree]]:
    """Per-term gradients from a function of the loss weights, one call per term.

    ``weighted_grads(weights) -> (terms, grads)``: the gradient of Σ weights[k]·terms[k] for
    weights given as f32 scalars (so that one compiled program serves every call, e.g. the
    trainer's `jdet.training.steps.loss_gradients`). It is called with one-hot weights for
    each name in `names`: K forward and backward passes, and no program of its own.
    Returns (terms, grads) like `per_term_grads`; terms are those of the first call.
    """
    names = sorted(names)
    if not names:
        raise ValueError("per_term_grads_by_weights: no loss terms named")
    terms, grads = None, {}
    for name in names:
        weights = {k: np.float32(1.0 if k == name else 0.0) for k in names}
        values, grads[name] = weighted_grads(weights)
        terms = values if terms is None else terms
    missing = sorted(set(names) - set(terms))
    if missing:
        raise ValueError(f"per_term_grads_by_weights: weighted_grads gave no term(s) {missing}")
    return {k: terms[k] for k in names}, grads


def diagnose(
    terms_fn: Callable[..., Any],
    params: PyTree,
    *args,
    has_aux: bool = False,
    method: str = "vmap",
    compile_fn: Callable[..., Any] | None = None,
    weighted_grads: Callable[[dict[str, jax.Array]], tuple[Any, PyTree]] | None = None,
    term_names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, PyTree]]:
    """Per-term gradient check with attribution: the trainer's step-0 diagnostic.

    The first pass derives every term's gradient:
      - method "vmap", "scan" or "separate": `per_term_grads` of terms_fn, under jit;
      - method "weights": `per_term_grads_by_weights(weighted_grads, term_names)`, which
        reuses a program the caller has compiled (the trainer's step), so a check in which
        every gradient is finite compiles nothing.
    The figures are computed on the host (`grad_stats`).

    With a shared backward pass (every method but "separate": "weights" too, since a term
    with weight 0 still sends 0·∂ back), a term whose gradient is not finite while its value
    is may have caught the NaN from another term (0·inf): it is derived again, first in one
    shared pass without the terms whose values are not finite (those keep the shared
    gradient: they are culprits either way), then, if still not finite, on its own (jax.grad
    of that term only; all such terms in one program). So a NaN produced by one term is not
    blamed on the others. method="separate" gives every term its own backward pass in the
    first place, so it needs no second program. The second passes differentiate terms_fn
    (method "scan" for "weights"), and are compiled only when they are needed.

    Returns:
      (report, grads): the `grad_report` dict, with ``attribution`` = "shared" (all finite),
      "isolated" (some gradient not finite) or "separate", and ``isolated_terms`` (the terms
      derived again apart from the others), and the per-term gradients.

    compile_fn(jitted, *args, **kwargs) → compiled, if given, compiles each program before
    it runs (`jdet.distributed.compile_synchronized` in multi-process runs).
    """

    def run(fn, *fn_args, **kwargs):
        if compile_fn is None:
            return fn(*fn_args, params, *args, **kwargs)
        return compile_fn(fn, *fn_args, params, *args, **kwargs)(params, *args)

    if method == "weights":
        if weighted_grads is None or term_names is None:
            raise ValueError('diagnose: method "weights" needs weighted_grads and term_names')
        terms, grads = per_term_grads_by_weights(weighted_grads, term_names)
        shared_method = "scan"
    else:
        terms, grads = run(_first_pass, terms_fn, has_aux=has_aux, method=method)[:2]
        shared_method = method
    grads = dict(grads)
    names = sorted(grads)
    stats = grad_stats(grads)
    if method == "separate" or bool(stats["finite"].all()):
        # "separate" gave every term its own backward pass: no NaN leaked between terms.
        report = grad_report(terms, grads, stats)
        attribution = "separate" if method == "separate" else "shared"
        report.update(attribution=attribution, isolated_terms=[])
        return report, grads

    # A shared backward pass: a term's infinite local derivative puts 0·inf = NaN into the
    # others' gradients too. A term whose value is not finite is a culprit whatever its
    # gradient, and keeps the shared one. The others with a non-finite gradient are derived
    # again: first in one shared pass without the terms whose values are not finite (one
    # program like the first; it clears the usual case, a NaN or inf loss leaking into the
    # rest), then, for any still not finite, each on its own (all in one program).
    values = jax.device_get({k: terms[k] for k in names})
    finite_value = tuple(n for n in names if math.isfinite(float(values[n])))
    suspects = [n for i, n in enumerate(names) if n in finite_value and not stats["finite"][i]]
    rederived = list(suspects)
    if suspects and len(finite_value) < len(names):

        def without_non_finite(p, *a):
            restricted = _only(terms_fn, finite_value, has_aux)
            return per_term_grads(restricted, p, *a, method=shared_method)[1]

        regrads = run(jax.jit(without_non_finite))
        grads.update({n: regrads[n] for n in suspects})
        finite = grad_stats({n: grads[n] for n in suspects})["finite"]
        suspects = [n for n, ok in zip(suspects, finite) if not ok]  # both in sorted order
    if suspects:
        alone = tuple(suspects)

        def isolated(p, *a):
            return {n: jax.grad(_single_term(terms_fn, n, has_aux))(p, *a) for n in alone}

        grads.update(run(jax.jit(isolated)))
    report = grad_report(terms, grads)
    report.update(attribution="isolated", isolated_terms=rederived)
    return report, grads


@functools.partial(jax.jit, static_argnums=0, static_argnames=("has_aux", "method"))
def _first_pass(fn, p, *a, has_aux, method):
    """`diagnose`'s first program: the per-term gradients. One jitted function for every
    call, so that a repeated check with the same terms_fn and argument types reuses its
    compilation."""
    return per_term_grads(fn, p, *a, has_aux=has_aux, method=method)


def _only(terms_fn, keep, has_aux):
    """terms_fn restricted to the terms named in `keep` (the others leave the graph)."""

    def restricted(p, *args):
        res = terms_fn(p, *args)
        return {k: v for k, v in (res[0] if has_aux else res).items() if k in keep}

    return restricted
