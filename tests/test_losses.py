"""Hand-computed values, masks, jit == eager, and regressions of the original's failure modes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet import losses as L
from jdet.losses.box import WIoUState
from tests.helpers import all_finite

E = jnp.eye(4)


# ---------------------------------------------------------------------------- DFL
@pytest.mark.parametrize("num_bins", [16, 17])
def test_dfl_uniform_logits_is_log_r_per_side(num_bins):
    logits = jnp.zeros((5, 4, num_bins))
    target = jnp.linspace(0, num_bins - 1, 20).reshape(5, 4)
    np.testing.assert_allclose(L.dfl_loss(logits, target), math.log(num_bins), rtol=1e-6)
    if num_bins == 17:  # the seed's 4·ln 17 ≈ 11.33 at init
        assert float(L.dfl_loss(logits, target).sum(-1).mean()) == pytest.approx(11.3331, abs=1e-3)


def test_dfl_half_target_splits_weight_and_gradient_is_softmax_minus_two_hot():
    # Regression (docs/original.md §7.2): integer targets lose the interpolation.
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 16))
    target = jnp.array([[3.5, 0.0, 14.99, 7.25]])
    grad = jax.grad(lambda z: L.dfl_loss(z, target).sum())(logits)
    two_hot = np.zeros((4, 16))
    two_hot[0, 3] = two_hot[0, 4] = 0.5
    two_hot[1, 0] = 1.0
    two_hot[2, 14], two_hot[2, 15] = 0.01, 0.99
    two_hot[3, 7], two_hot[3, 8] = 0.75, 0.25
    np.testing.assert_allclose(grad[0], jax.nn.softmax(logits[0]) - two_hot, atol=1e-5)
    # An integer-cast target (the original's bug) would give a different loss.
    assert float(L.dfl_loss(logits, target)[0, 0]) != pytest.approx(
        float(L.dfl_loss(logits, jnp.floor(target))[0, 0]), rel=1e-3
    )


def test_dfl_top_bin_and_extreme_logits_finite():
    logits = jnp.full((2, 4, 17), -1e4).at[0, :, 0].set(1e4)
    target = jnp.array([[0.0, 16.0, 100.0, -5.0], [16 - 0.01, 8.0, 0.0, 3.3]])
    val, grad = jax.value_and_grad(lambda z: L.dfl_loss(z, target).sum())(logits)
    assert bool(jnp.isfinite(val)) and all_finite(grad)


# ---------------------------------------------------------------------------- BCE / cls
def test_bce_zero_logit_is_ln2_and_extremes():
    t = jnp.array([0.0, 0.3, 1.0])
    np.testing.assert_allclose(L.bce_with_logits(jnp.zeros(3), t), math.log(2), rtol=1e-6)
    big = jnp.array([1e4, -1e4, 1e4])
    val, g = jax.value_and_grad(lambda x: L.bce_with_logits(x, jnp.array([1.0, 0.0, 0.0])).sum())(
        big
    )
    assert float(val) == pytest.approx(1e4) and all_finite(g)


def test_cls_loss_normaliser_and_mask():
    logits = jnp.zeros((1, 3, 2))
    scores = jnp.zeros((1, 3, 2)).at[0, 0, 0].set(0.5)
    # Σ scores = 0.5 < 1 → divide by 1.
    assert float(L.cls_loss(logits, scores)) == pytest.approx(6 * math.log(2), rel=1e-6)
    scores = scores.at[0, 1, 1].set(2.5)  # Σ = 3
    assert float(L.cls_loss(logits, scores)) == pytest.approx(2 * math.log(2), rel=1e-5)
    # Masking class 1 removes its 3 elements; masked logits get zero gradient.
    mask = jnp.array([[True, False]])
    assert float(L.cls_loss(logits, scores, mask)) == pytest.approx(math.log(2), rel=1e-5)
    g = jax.grad(lambda z: L.cls_loss(z, scores, mask))(logits)
    assert float(jnp.abs(g[..., 1]).max()) == 0.0


# ---------------------------------------------------------------------------- box
def test_ciou_loss_identical_is_zero_and_disjoint_near_one():
    a = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    assert float(L.ciou_loss(a, a)[0]) == pytest.approx(0.0, abs=1e-6)
    touching = jnp.array([[10.0, 0.0, 20.0, 10.0]])
    assert float(L.ciou_loss(a, touching)[0]) == pytest.approx(1.0 + 100 / 500, rel=1e-4)


def test_wiou_values_and_state():
    pred = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    tgt = jnp.array([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    mask = jnp.array([True, False])
    l_iou = 1 - 50 / 150
    r = math.exp(25 / (15**2 + 10**2))
    v1, _ = L.wiou_loss(pred, tgt, mask, WIoUState.init(), variant="v1")
    np.testing.assert_allclose(v1, [r * l_iou, 0.0], rtol=1e-5)
    v2, st = L.wiou_loss(pred, tgt, mask, WIoUState.init(), variant="v2", momentum=0.01)
    m = 0.99 + 0.01 * l_iou  # updated before β
    assert float(st.mean) == pytest.approx(m, rel=1e-6)
    np.testing.assert_allclose(v2[0], r * l_iou * math.sqrt(l_iou / m), rtol=1e-5)
    v3, _ = L.wiou_loss(pred, tgt, mask, WIoUState.init(), variant="v3", alpha=1.9, delta=3.0)
    beta = l_iou / m
    np.testing.assert_allclose(v3[0], r * l_iou * beta / (3 * 1.9 ** (beta - 3)), rtol=1e-5)
    # Eval: frozen mean; no foreground: mean unchanged.
    _, st_eval = L.wiou_loss(pred, tgt, mask, WIoUState.init(), variant="v3", train=False)
    _, st_none = L.wiou_loss(pred, tgt, jnp.zeros(2, bool), WIoUState.init(), variant="v3")
    assert float(st_eval.mean) == 1.0 and float(st_none.mean) == 1.0


def test_wiou_perfect_box_v2_finite_gradient():
    # β = 0 for a perfect box: sqrt(β) must not put ∞·0 in the gradient (docs/losses.md §7.9).
    a = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    g = jax.grad(
        lambda p: L.wiou_loss(p, a, jnp.array([True]), WIoUState.init(), variant="v2")[0].sum()
    )(a)
    assert all_finite(g)


# ---------------------------------------------------------------------------- SupCon
def _four():
    feats = jnp.stack([E[0], E[0], E[1], E[1]])
    return feats, jnp.array([0, 0, 1, 1])


def test_supcon_closed_form():
    feats, labels = _four()
    expected = math.log(1 + 2 * math.exp(-1))
    got = L.supcon_loss(feats, labels, temperature=1.0, base_temperature=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # τ/τ_b factor.
    got = L.supcon_loss(feats, labels, temperature=0.5, base_temperature=0.07)
    assert float(got) == pytest.approx(0.5 / 0.07 * math.log(1 + 2 * math.exp(-2)), rel=1e-5)


def test_supcon_random_high_dim_is_log_of_candidates():
    feats = jnp.ones((8, 16))  # all equal: every logit the same
    got = L.supcon_loss(feats, jnp.array([0, 0, 0, 1, 1, 1, 2, 2]))
    assert float(got) == pytest.approx(math.log(7), rel=1e-5)


def test_supcon_masked_entries_have_no_effect():
    feats, labels = _four()
    junk = jnp.concatenate([feats, 100 * jnp.ones((2, 4))])
    lab = jnp.concatenate([labels, jnp.array([0, 1])])
    mask = jnp.array([True] * 4 + [False] * 2)
    ref = L.supcon_loss(feats, labels)
    np.testing.assert_allclose(L.supcon_loss(junk, lab, mask), ref, rtol=1e-6)
    g = jax.grad(lambda f: L.supcon_loss(f, lab, mask))(junk)
    assert float(jnp.abs(g[4:]).max()) == 0.0 and all_finite(g)


def test_supcon_no_positive_anchor_excluded_vs_reference_mode():
    feats = jnp.stack([E[0], E[0], E[1]])
    labels = jnp.array([0, 0, 1])  # anchor 2 has no positive
    jd = float(L.supcon_loss(feats, labels, temperature=1.0, base_temperature=1.0))
    ref = float(
        L.supcon_loss(feats, labels, temperature=1.0, base_temperature=1.0, mode="reference")
    )
    per = math.log(1 + math.exp(-1))
    assert jd == pytest.approx(per, rel=1e-6)
    assert ref == pytest.approx(2 * per / 3, rel=1e-6)  # the reference dilutes the mean


def test_supcon_underflowing_denominator_regression():
    # docs/original.md §7.1: log of a near-zero denominator. Two antipodal same-label features at
    # τ = 0.01. With the reference's shift by the row max *including self*, the other sample's
    # term is e^{-200}: it underflows to 0 in f32, log(0) = −inf (the original's NaNs), and the
    # seed's clamp gives a finite but wrong 200 + log(1e-6) ≈ 186 with a zero gradient.
    feats = jnp.stack([E[0], -E[0]])
    labels = jnp.array([0, 0])
    naive_denominator = jnp.exp(jnp.float32(-200.0))
    assert float(naive_denominator) == 0.0 and not np.isfinite(float(jnp.log(naive_denominator)))
    val, g = jax.value_and_grad(
        lambda f: L.supcon_loss(f, labels, temperature=0.01, base_temperature=0.01)
    )(feats)
    # The only candidate is the positive: its probability is 1, the exact loss is 0.
    assert float(val) == pytest.approx(0.0, abs=1e-6)
    assert all_finite(g)


def test_supcon_clamp_does_not_change_the_value():
    # Vertices of a regular tetrahedron: every cosine between distinct samples is −1/3, so each
    # anchor's 3 candidates are equally likely and the exact loss is ln 3. With the references'
    # self-inclusive shift at τ = 0.07, Σ_{j≠i} e^{s_ij} = 3·e^{(−1/3 − 1)/0.07} ≈ 1.6e-8: the
    # seed's clamp at 1e-6 would bind and report (1/3 + 1)/0.07 + ln 1e-6 ≈ 5.23 instead.
    z = jnp.array([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)
    labels = jnp.array([0, 0, 1, 1])
    assert 3 * math.exp((-1 / 3 - 1) / 0.07) < 1e-6
    val, g = jax.value_and_grad(lambda f: L.supcon_loss(f, labels))(z)
    assert float(val) == pytest.approx(math.log(3), rel=1e-5)
    assert all_finite(g)
    # CPE simplified, same geometry: −log(1/3) as well.
    assert float(L.cpe_loss(z, labels, jnp.ones(4))) == pytest.approx(math.log(3), rel=1e-5)


def test_supcon_zero_norm_and_single_sample():
    val, g = jax.value_and_grad(lambda f: L.supcon_loss(f, jnp.array([0, 0, 1])))(jnp.zeros((3, 4)))
    assert bool(jnp.isfinite(val)) and all_finite(g)
    val, g = jax.value_and_grad(lambda f: L.supcon_loss(f, jnp.array([0])))(jnp.ones((1, 4)))
    assert float(val) == 0.0 and all_finite(g)


# ---------------------------------------------------------------------------- prototype, CPE
def test_prototype_contrastive_uniform_is_log_k_and_padded_ways():
    q = jnp.stack([E[2], E[3]])[None]  # orthogonal to both prototypes
    protos = jnp.stack([E[0], E[1], E[0] + E[1]])[None]
    labels = jnp.array([[0, 1]])
    got = L.prototype_contrastive_loss(q, protos[:, :2], labels, jnp.array([[True, True]]))
    assert float(got) == pytest.approx(math.log(2), rel=1e-6)
    # A padded third way is ignored (its logit is NEG, not -inf): still ln 2.
    pmask = jnp.array([[True, True, False]])
    got = L.prototype_contrastive_loss(q, protos, labels, jnp.array([[True, True]]), pmask)
    assert float(got) == pytest.approx(math.log(2), rel=1e-6)
    g = jax.grad(
        lambda p: L.prototype_contrastive_loss(q, p, labels, jnp.array([[True, True]]), pmask)
    )(protos)
    assert float(jnp.abs(g[0, 2]).max()) == 0.0


def test_cpe_simplified_closed_form_and_log_ratio():
    feats, labels = _four()
    ious = jnp.full((4,), 0.8)
    got = L.cpe_loss(feats, labels, ious, temperature=1.0)
    assert float(got) == pytest.approx(math.log(1 + 2 * math.exp(-1)), rel=1e-6)
    # Equal features: ln(|pos ∪ neg| / |pos|) = ln(3 / 1).
    got = L.cpe_loss(jnp.ones((4, 8)), labels, ious)
    assert float(got) == pytest.approx(math.log(3), rel=1e-5)


def test_cpe_full_pair_rules():
    feats = jnp.ones((4, 8))
    labels = jnp.array([0, 0, 0, 1])
    ious = jnp.array([0.9, 0.85, 0.55, 0.9])  # |0.9 − 0.55| ≥ 0.2: not a positive pair
    got = L.cpe_loss(feats, labels, ious, variant="full")
    # Rows 0, 1: 1 positive, 1 negative → ln 2; row 2: positives none → excluded; row 3: none.
    assert float(got) == pytest.approx(math.log(2), rel=1e-5)


def test_cpe_fsce_threshold_and_reweight():
    feats = jnp.ones((3, 8))
    labels = jnp.array([0, 0, 1])
    ious = jnp.array([0.9, 0.6, 0.2])
    # Rows with IoU ≥ 0.7: row 0 only; log p = −ln 2 for its one positive, / (|P|+1 = 2).
    got = L.cpe_loss(feats, labels, ious, variant="fsce", iou_threshold=0.7)
    assert float(got) == pytest.approx(math.log(2) / 2, rel=1e-5)
    got = L.cpe_loss(feats, labels, ious, variant="fsce", iou_threshold=0.7, reweight="exp")
    assert float(got) == pytest.approx(math.log(2) / 2 * (math.exp(0.9) - 1), rel=1e-5)
    with pytest.raises(ValueError, match="variant"):
        L.cpe_loss(feats, labels, ious, variant="nope")


# ---------------------------------------------------------------------------- triplet
def test_triplet_plain_closed_form():
    a = jnp.stack([E[0], E[0]])
    p = jnp.stack([(E[0] + E[1]) / math.sqrt(2), E[1]])
    n = jnp.stack([E[1], E[0]])
    assert float(L.triplet_loss(a, p, n)) == pytest.approx((0 + 1.3) / 2, rel=1e-6)
    assert float(L.triplet_loss(a, p, n, mask=jnp.array([True, False]))) == 0.0


def test_triplet_random_is_near_margin():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    a, p, n = (jax.random.normal(x, (512, 256)) for x in k)
    assert float(L.triplet_loss(a, p, n)) == pytest.approx(0.3, abs=0.02)


def test_batch_hard_closed_form():
    emb = jnp.stack([E[0], E[1], E[0], -E[0]])
    labels = jnp.array([0, 0, 1, 1])
    assert float(L.batch_hard_triplet_loss(emb, labels)) == pytest.approx(1.3, rel=1e-6)


def test_batch_hard_degenerate():
    # All labels equal (no negatives), all distinct (no positives), identical embeddings.
    for labels in [jnp.zeros(4, jnp.int32), jnp.arange(4)]:
        val, g = jax.value_and_grad(lambda e: L.batch_hard_triplet_loss(e, labels))(
            jnp.ones((4, 3))
        )
        assert float(val) == 0.0 and all_finite(g)
    val, g = jax.value_and_grad(lambda e: L.batch_hard_triplet_loss(e, jnp.array([0, 0, 1, 1])))(
        jnp.zeros((4, 3))
    )
    assert bool(jnp.isfinite(val)) and all_finite(g)


# ---------------------------------------------------------------------------- jit == eager
def test_losses_jit_equals_eager():
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    f = jax.random.normal(k[0], (10, 6))
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 3, 3])
    mask = jnp.arange(10) < 9
    ious = jax.random.uniform(k[1], (10,))
    cases = [
        (L.supcon_loss, (f, labels, mask)),
        (L.cpe_loss, (f, labels, ious, mask)),
        (L.batch_hard_triplet_loss, (f, labels, mask)),
        (L.triplet_loss, (f, f[::-1], f + 1)),
        (L.dfl_loss, (jax.random.normal(k[2], (3, 4, 17)), jax.random.uniform(k[3], (3, 4)) * 16)),
    ]
    for fn, args in cases:
        np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-5, atol=1e-6)
