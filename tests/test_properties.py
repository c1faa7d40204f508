"""Property tests: every loss is finite in value AND gradient on random and degenerate inputs.

Profiles (tests/conftest.py): "ci" (default, 100 examples per test) and "thorough"
(10,000 per test, the deep profile): HYPOTHESIS_PROFILE=thorough python3 -m pytest -q
tests/test_properties.py

Each function under test is jitted once with fixed shapes, so examples do not recompile.
Masked entries must receive a gradient of exactly 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from jdet import boxes as B
from jdet import losses as L
from jdet.losses.box import WIoUState
from tests.helpers import STAGE2_WEIGHTS, all_finite, head_outputs, split_outputs

N = 6  # samples / box pairs per example
D = 5  # feature dimension
SCALES = [1e-6, 1e-3, 1.0, 64.0, 1e3, 1e6]
BOX_KINDS = ["random", "identical", "zero_w", "zero_h", "zero_area", "inverted", "far", "nested"]


@st.composite
def box_pairs(draw, n=N):
    b1 = np.zeros((n, 4), np.float32)
    b2 = np.zeros((n, 4), np.float32)
    for i in range(n):
        kind = draw(st.sampled_from(BOX_KINDS))
        scale = draw(st.sampled_from(SCALES))
        u = np.array(draw(st.lists(st.floats(0, 1), min_size=8, max_size=8)), np.float32)
        x1, y1 = u[0] * scale, u[1] * scale
        a = np.array([x1, y1, x1 + u[2] * scale, y1 + u[3] * scale])
        c = np.array(
            [u[4] * scale, u[5] * scale, u[4] * scale + u[6] * scale, u[5] * scale + u[7] * scale]
        )
        if kind == "identical":
            c = a.copy()
        elif kind == "zero_w":
            a[2] = a[0]
        elif kind == "zero_h":
            c[3] = c[1]
        elif kind == "zero_area":
            a[2:] = a[:2]
            c = a.copy() if u[0] > 0.5 else c
        elif kind == "inverted":
            a = a[[2, 3, 0, 1]]
        elif kind == "far":
            c = a + 1e6
        elif kind == "nested":
            c = np.array([a[0], a[1], (a[0] + a[2]) / 2, (a[1] + a[3]) / 2])
        b1[i], b2[i] = a, c
    return b1, b2


@st.composite
def feature_sets(draw, n=N, d=D):
    kind = draw(
        st.sampled_from(["random", "zero", "identical", "antipodal", "orthogonal", "huge", "tiny"])
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, d)).astype(np.float32)
    if kind == "zero":
        f[:] = 0
    elif kind == "identical":
        f[:] = f[0]
    elif kind == "antipodal":
        f[1::2] = -f[0]
        f[0::2] = f[0]
    elif kind == "orthogonal":
        f = np.eye(n, d, dtype=np.float32)
    elif kind == "huge":
        f *= 1e6
    elif kind == "tiny":
        f *= 1e-20
    lab_kind = draw(st.sampled_from(["equal", "distinct", "random"]))
    labels = {"equal": np.zeros(n), "distinct": np.arange(n), "random": rng.integers(0, 3, n)}[
        lab_kind
    ]
    mask_kind = draw(st.sampled_from(["all", "none", "one", "random"]))
    mask = {
        "all": np.ones(n, bool),
        "none": np.zeros(n, bool),
        "one": np.arange(n) == 0,
        "random": rng.random(n) < 0.5,
    }[mask_kind]
    temperature = draw(st.sampled_from([0.01, 0.07, 0.1, 0.5, 1.0]))
    ious = rng.random(n).astype(np.float32)
    return f, labels.astype(np.int32), mask, np.float32(temperature), ious


def _assert_finite_and_masked(val, grad, mask=None):
    assert bool(jnp.isfinite(val)), val
    assert all_finite(grad), grad
    if mask is not None:
        assert float(jnp.abs(jnp.asarray(grad)[~mask]).max(initial=0.0)) == 0.0


# ---------------------------------------------------------------------------- boxes
@functools.cache
def _iou_vg(kind):
    return jax.jit(jax.value_and_grad(lambda a, b: B.bbox_iou(a, b, kind).sum(), argnums=(0, 1)))


@given(box_pairs())
def test_iou_family_finite(pair):
    for kind in ("iou", "giou", "diou", "ciou"):
        val, grads = _iou_vg(kind)(*pair)
        _assert_finite_and_masked(val, grads)
        ious = B.bbox_iou(jnp.asarray(pair[0]), jnp.asarray(pair[1]), kind)
        # IoU ∈ [0, 1], GIoU/DIoU ∈ (−1, 1]; CIoU's extra α·v = v²/(v − IoU + 1) ≤ 1/2 puts it
        # in (−1.5, 1] (docs/losses.md's "(−1, 1]" holds only when the aspect term vanishes).
        lower = {"iou": 0.0, "giou": -1.0, "diou": -1.0, "ciou": -1.5}[kind]
        assert bool((ious <= 1.0 + 1e-5).all()) and bool((ious >= lower - 1e-5).all())


@functools.cache
def _box_losses():
    def ciou(p, t, m):
        return jnp.where(m, L.ciou_loss(p, t), 0.0).sum()

    def wiou(p, t, m, mean, variant):
        loss, st = L.wiou_loss(p, t, m, WIoUState(mean), variant=variant)
        return loss.sum() + 0.0 * st.mean

    return (
        jax.jit(jax.value_and_grad(ciou)),
        jax.jit(jax.value_and_grad(wiou), static_argnums=4),
    )


@given(
    box_pairs(),
    st.lists(st.booleans(), min_size=N, max_size=N),
    st.sampled_from([1e-9, 0.5, 1.0, 3.0]),
)
def test_box_losses_finite_and_masked(pair, mask, mean):
    mask = np.array(mask)
    ciou, wiou = _box_losses()
    val, g = ciou(*pair, mask)
    _assert_finite_and_masked(val, g, mask)
    for variant in ("v1", "v2", "v3"):
        val, g = wiou(*pair, mask, np.float32(mean), variant)
        _assert_finite_and_masked(val, g, mask)


# ---------------------------------------------------------------------------- DFL, BCE
@functools.cache
def _dfl_vg():
    return jax.jit(jax.value_and_grad(lambda z, y: L.dfl_loss(z, y).sum()))


@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.0, 1.0, 30.0, 1e4]),
    st.sampled_from(["random", "zero", "top", "beyond", "negative", "half"]),
)
def test_dfl_finite(seed, scale, target_kind):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((N, 4, 17))).astype(np.float32)
    y = {
        "random": rng.random((N, 4)) * 16,
        "zero": np.zeros((N, 4)),
        "top": np.full((N, 4), 16 - 0.01),
        "beyond": np.full((N, 4), 1e6),
        "negative": np.full((N, 4), -3.0),
        "half": np.floor(rng.random((N, 4)) * 15) + 0.5,
    }[target_kind].astype(np.float32)
    val, g = _dfl_vg()(logits, y)
    _assert_finite_and_masked(val, g)
    assert float(val) >= -1e-4


@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 1.0, 100.0, 1e4, 1e30]))
def test_bce_finite(seed, scale):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((N, 3))).astype(np.float32)
    t = rng.random((N, 3)).astype(np.float32) * (rng.random((N, 3)) < 0.5)
    val, g = jax.value_and_grad(lambda z: L.cls_loss(z[None], jnp.asarray(t)[None]))(x)
    _assert_finite_and_masked(val, g)


# ---------------------------------------------------------------------------- contrastive
@functools.cache
def _contrastive():
    def supcon(f, y, m, t):
        return L.supcon_loss(f, y, m, temperature=t, base_temperature=0.07)

    def cpe(f, y, m, t, ious, variant):
        return L.cpe_loss(
            f,
            y,
            ious,
            m,
            temperature=t,
            variant=variant,
            reweight="exp" if variant == "fsce" else "none",
        )

    def proto(f, y, m, t):
        protos = f[:3] * 2.0 + 0.1
        return L.prototype_contrastive_loss(
            f, protos, y, m, jnp.array([True, True, False]), temperature=t
        )

    def hard(f, y, m):
        return L.batch_hard_triplet_loss(f, y, m)

    def plain(f, m):
        return L.triplet_loss(f, f[::-1], -f + 1e-3, mask=m)

    vg = lambda fn, **kw: jax.jit(jax.value_and_grad(fn), **kw)  # noqa: E731
    return dict(
        supcon=vg(supcon),
        cpe=vg(cpe, static_argnums=5),
        proto=vg(proto),
        hard=vg(hard),
        plain=vg(plain),
    )


@given(feature_sets())
def test_contrastive_losses_finite_and_masked(data):
    f, y, m, t, ious = data
    fns = _contrastive()
    _assert_finite_and_masked(*fns["supcon"](f, y, m, t), m)
    for variant in ("simplified", "full", "fsce"):
        _assert_finite_and_masked(*fns["cpe"](f, y, m, t, ious, variant), m)
    _assert_finite_and_masked(*fns["hard"](f, y, m), m)
    _assert_finite_and_masked(*fns["plain"](f, m))
    # Prototype CE: labels into 2 real ways of 3 (third padded); prototypes derive from f.
    val, g = fns["proto"](f, np.clip(y, 0, 1), m, t)
    _assert_finite_and_masked(val, g)


@given(feature_sets())
def test_contrastive_jit_equals_eager(data):
    f, y, m, t, ious = data
    for fn, args in [
        (L.supcon_loss, (f, y, m, float(t))),
        (L.batch_hard_triplet_loss, (f, y, m)),
    ]:
        np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------------------- loss_terms
@functools.cache
def _terms_vg(assigner):
    cfg = L.LossConfig(assigner=assigner)
    weights = STAGE2_WEIGHTS

    def total(params, const, batch):
        terms, _ = L.loss_terms({**params, **const}, batch, cfg)
        return L.weighted_total(terms, weights)

    return jax.jit(jax.value_and_grad(total))


@st.composite
def detection_batches(draw):
    m = 4
    boxes = np.zeros((2, m, 4), np.float32)
    for b in range(2):
        for j in range(m):
            kind = draw(
                st.sampled_from(["normal", "tiny", "whole", "zero_area", "thin", "outside"])
            )
            u = np.array(draw(st.lists(st.floats(0, 1), min_size=4, max_size=4)), np.float32)
            x1, y1 = u[0] * 56, u[1] * 56
            boxes[b, j] = {
                "normal": [x1, y1, x1 + 2 + u[2] * 40, y1 + 2 + u[3] * 40],
                "tiny": [x1, y1, x1 + 0.5, y1 + 0.5],
                "whole": [0, 0, 64, 64],
                "zero_area": [x1, y1, x1, y1],
                "thin": [x1, y1, x1 + 30, y1 + 1e-4],
                "outside": [100, 100, 120, 130],
            }[kind]
    labels = np.array(
        draw(st.lists(st.integers(0, 2), min_size=2 * m, max_size=2 * m)), np.int32
    ).reshape(2, m)
    mask = np.array(draw(st.lists(st.booleans(), min_size=2 * m, max_size=2 * m))).reshape(2, m)
    ways = np.array(draw(st.lists(st.booleans(), min_size=6, max_size=6))).reshape(2, 3)
    return dict(boxes=boxes, labels=labels, box_mask=mask, support_mask=ways)


@given(
    detection_batches(),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.0, 1.0, 30.0, 1e3]),
    st.sampled_from(["tal", "center"]),
)
def test_loss_terms_finite(batch, seed, scale, assigner):
    params, const = split_outputs(head_outputs(jax.random.PRNGKey(seed % 1000), scale=scale))
    val, g = _terms_vg(assigner)(params, const, batch)
    _assert_finite_and_masked(val, g)
