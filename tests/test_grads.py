import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.grads import (
    diagnose,
    format_grad_report,
    grad_report,
    grad_stats,
    per_term_grads,
    per_term_grads_by_weights,
)
from jdet.losses import loss_terms, weighted_total
from jdet.training.diagnostics import checked_per_term_grads
from tests.helpers import STAGE2_WEIGHTS, head_outputs, simple_batch, split_outputs


def _terms_fn(params, batch):
    return loss_terms(params, batch)[0]


def test_per_term_grads_match_individual_grads_and_weighted_sum():
    params, const = split_outputs(head_outputs(jax.random.PRNGKey(0)))
    batch = simple_batch()
    fn = lambda p, b: _terms_fn({**p, **const}, b)  # noqa: E731
    terms, grads = jax.jit(per_term_grads, static_argnums=0)(fn, params, batch)
    assert sorted(grads) == sorted(STAGE2_WEIGHTS)
    for method in ("separate", "scan"):
        _, other = jax.jit(per_term_grads, static_argnums=0, static_argnames="method")(
            fn, params, batch, method=method
        )
        for name in STAGE2_WEIGHTS:
            for a, b in zip(jax.tree.leaves(other[name]), jax.tree.leaves(grads[name])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=method)
    for name in ("dfl", "supcon"):
        single = jax.grad(lambda p: fn(p, batch)[name])(params)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(grads[name])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Σ w_k ∇term_k == ∇(Σ w_k term_k), ≤ 1e-5 relative (global norm).
    total_grad = jax.grad(lambda p: weighted_total(fn(p, batch), STAGE2_WEIGHTS))(params)
    combo = jax.tree.map(
        lambda *gs: sum(STAGE2_WEIGHTS[n] * g for n, g in zip(sorted(STAGE2_WEIGHTS), gs)),
        *[grads[n] for n in sorted(STAGE2_WEIGHTS)],
    )
    diff = sum(
        float(jnp.sum((a - b) ** 2))
        for a, b in zip(jax.tree.leaves(combo), jax.tree.leaves(total_grad))
    )
    norm = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(total_grad))
    assert diff**0.5 <= 1e-5 * norm**0.5


def test_per_term_grads_by_weights_reuses_one_program():
    """The trainer's check: one compiled program of the weighted loss's gradient, the weights
    as arguments, called once per term with one-hot weights = the shared-pass gradients."""
    params, const = split_outputs(head_outputs(jax.random.PRNGKey(3)))
    batch = simple_batch()
    fn = lambda p: _terms_fn({**p, **const}, batch)  # noqa: E731

    @jax.jit
    def weighted(p, weights):
        return fn(p), jax.grad(lambda q: weighted_total(fn(q), weights))(p)

    seen = []

    def weighted_grads(weights):
        seen.append([k for k, v in sorted(weights.items()) if v == 1])
        return weighted(params, weights)

    terms, grads = per_term_grads_by_weights(weighted_grads, list(STAGE2_WEIGHTS))
    assert seen == [[k] for k in sorted(STAGE2_WEIGHTS)]  # one call per term, one-hot
    assert weighted._cache_size() == 1  # one program served every term
    ref_terms, ref = per_term_grads(fn, params, method="scan")
    for name in STAGE2_WEIGHTS:
        np.testing.assert_allclose(terms[name], ref_terms[name], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads[name]), jax.tree.leaves(ref[name])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
    stats, ref_stats = grad_stats(grads), grad_stats(ref)
    for key in ("finite", "norm", "max_abs", "cosine"):
        np.testing.assert_allclose(stats[key], ref_stats[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no term"):
        per_term_grads_by_weights(lambda w: ({"a": 0.0}, {}), ["a", "b"])


def test_has_aux_and_report_table():
    params = {"w": jnp.array([1.0, 2.0])}

    def fn(p):
        return {"a": jnp.sum(p["w"] ** 2), "b": jnp.sum(p["w"]), "c": jnp.sum(-p["w"] * 0)}, 7

    terms, grads, aux = per_term_grads(fn, params, has_aux=True)
    assert aux == 7
    np.testing.assert_allclose(grads["a"]["w"], [2.0, 4.0])
    stats = grad_stats(grads)
    np.testing.assert_allclose(stats["norm"], [np.sqrt(20), np.sqrt(2), 0.0], rtol=1e-6)
    np.testing.assert_allclose(stats["cosine"][0, 1], 6 / (np.sqrt(20) * np.sqrt(2)), rtol=1e-6)
    assert float(stats["cosine"][0, 2]) == 0.0
    report = grad_report(terms, grads)
    assert report["all_finite"]
    table = format_grad_report(report)
    assert "✓" in table and "✗" not in table and "all terms finite" in table


def test_report_flags_non_finite_term():
    params = {"w": jnp.array([0.0, 1.0])}
    fn = lambda p: {"ok": jnp.sum(p["w"]), "bad": jnp.sum(jnp.sqrt(p["w"]))}  # noqa: E731
    # One shared backward pass: sqrt'(0) = inf leaks 0·inf = NaN into the other term too.
    terms, grads = per_term_grads(fn, params)
    shared = grad_report(terms, grads)
    assert not shared["terms"]["bad"]["grad_finite"] and not shared["terms"]["ok"]["grad_finite"]
    # diagnose() re-derives non-finite terms alone and blames only the culprit.
    # method="separate" differentiates each term alone: no leak in the first place.
    _, grads_sep = per_term_grads(fn, params, method="separate")
    assert bool(jnp.isfinite(grads_sep["ok"]["w"]).all())
    report, grads = diagnose(fn, params)
    assert report["attribution"] == "isolated"
    assert sorted(report["isolated_terms"]) == ["bad", "ok"]  # both values are finite
    assert not report["all_finite"] and not report["terms"]["bad"]["grad_finite"]
    assert report["terms"]["ok"]["grad_finite"]
    np.testing.assert_allclose(grads["ok"]["w"], [1.0, 1.0])
    table = format_grad_report(report)
    assert "✗" in table and "bad" in table.splitlines()[-1]
    with pytest.raises(Exception, match="non-finite output"):
        checked_per_term_grads(fn)(params)


@pytest.mark.parametrize("method", ["vmap", "scan"])
def test_diagnose_rederives_terms_that_caught_a_nan_from_another(method):
    params = {"w": jnp.array([0.0, 1.0])}
    # 0 · NaN: the NaN term's zero cotangent row still poisons the others in the shared pass.
    fn = lambda p: {  # noqa: E731
        "ok": jnp.sum(p["w"]),
        "nan": jnp.sum(p["w"]) * jnp.nan,
        "also_ok": jnp.sum(p["w"] ** 2),
    }
    _, shared = per_term_grads(fn, params, method=method)
    assert not bool(jnp.isfinite(shared["ok"]["w"]).all())
    report, grads = diagnose(fn, params, method=method)
    assert report["attribution"] == "isolated"
    assert report["isolated_terms"] == ["also_ok", "ok"]
    assert report["terms"]["ok"]["grad_finite"] and report["terms"]["also_ok"]["grad_finite"]
    assert not report["terms"]["nan"]["value_finite"] and not report["terms"]["nan"]["grad_finite"]
    np.testing.assert_allclose(grads["ok"]["w"], [1.0, 1.0])
    np.testing.assert_allclose(grads["also_ok"]["w"], [0.0, 2.0])
    # A finite value with an infinite derivative: only derived alone does "ok" come clean.
    fn2 = lambda p: {**fn(p), "sqrt": jnp.sum(jnp.sqrt(p["w"]))}  # noqa: E731
    report, grads = diagnose(fn2, params, method=method)
    assert report["isolated_terms"] == ["also_ok", "ok", "sqrt"]
    assert report["terms"]["ok"]["grad_finite"] and not report["terms"]["sqrt"]["grad_finite"]
    np.testing.assert_allclose(grads["ok"]["w"], [1.0, 1.0])


def test_diagnose_by_weights_blames_the_culprit():
    """method "weights" shares the backward pass (a 0-weighted NaN term still sends 0·NaN
    back), so the leaked NaN is re-derived apart, as for "scan"."""
    params = {"w": jnp.array([0.0, 1.0])}
    fn = lambda p: {  # noqa: E731
        "ok": jnp.sum(p["w"]),
        "nan": jnp.sum(p["w"]) * jnp.nan,
        "also_ok": jnp.sum(p["w"] ** 2),
    }
    weighted = jax.jit(
        lambda p, w: (fn(p), jax.grad(lambda q: weighted_total(fn(q), w))(p))
    )
    kwargs = dict(method="weights", weighted_grads=lambda w: weighted(params, w))
    report, grads = diagnose(fn, params, term_names=["ok", "nan", "also_ok"], **kwargs)
    assert report["attribution"] == "isolated" and report["isolated_terms"] == ["also_ok", "ok"]
    assert report["terms"]["ok"]["grad_finite"] and not report["terms"]["nan"]["grad_finite"]
    np.testing.assert_allclose(grads["also_ok"]["w"], [0.0, 2.0])
    with pytest.raises(ValueError, match="term_names"):
        diagnose(fn, params, **kwargs)


def test_diagnose_separate_needs_no_second_pass():
    params = {"w": jnp.array([0.0, 1.0])}
    fn = lambda p: {"ok": jnp.sum(p["w"]), "bad": jnp.sum(jnp.sqrt(p["w"]))}  # noqa: E731
    report, grads = diagnose(fn, params, method="separate")
    assert report["attribution"] == "separate" and report["isolated_terms"] == []
    assert report["terms"]["ok"]["grad_finite"] and not report["terms"]["bad"]["grad_finite"]


def test_terms_fn_must_return_dict():
    with pytest.raises(TypeError, match="dict"):
        per_term_grads(lambda p: jnp.sum(p), jnp.ones(2))


def test_diagnose_on_detection_terms_all_finite():
    params, const = split_outputs(head_outputs(jax.random.PRNGKey(1)))
    fn = lambda p, b: _terms_fn({**p, **const}, b)  # noqa: E731
    report, grads = diagnose(fn, params, simple_batch())
    assert report["all_finite"] and report["attribution"] == "shared"
    assert set(report["terms"]) == set(STAGE2_WEIGHTS)
    assert all(t["grad_norm"] > 0 for t in report["terms"].values())


def test_repeated_check_compiles_once():
    """The trainer checks every `debug.grad_check_every` steps: the second check on arguments
    of the same types reuses the first one's program (lower().compile() would redo it)."""
    from jdet.training import diagnostics

    compiled = []

    def counting(jitted, *args, **kwargs):
        compiled.append(jitted)
        return jitted.lower(*args, **kwargs).compile()

    fn = lambda p, x: {"a": jnp.sum(p["w"] * x), "b": jnp.sum(p["w"] ** 2)}  # noqa: E731
    params = {"w": jnp.array([0.5, 1.0])}
    monkey = pytest.MonkeyPatch()
    monkey.setattr(diagnostics, "compile_synchronized", counting)
    try:
        first, _ = diagnose(fn, params, jnp.ones(2), compile_fn=diagnostics.compile_remembered)
        again, grads = diagnose(
            fn, {"w": jnp.array([2.0, 3.0])}, jnp.ones(2), compile_fn=diagnostics.compile_remembered
        )
        assert len(compiled) == 1  # same program, same argument types
        np.testing.assert_allclose(grads["b"]["w"], [4.0, 6.0])  # the new params' gradient
        wider = {"w": jnp.ones(3)}
        diagnose(fn, wider, jnp.ones(3), compile_fn=diagnostics.compile_remembered)
        assert len(compiled) == 2  # another shape: another program
    finally:
        monkey.undo()
    assert first["all_finite"] and again["all_finite"]
