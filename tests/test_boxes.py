import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet import boxes as B
from tests.helpers import all_finite


def test_conversions_roundtrip():
    xyxy = jnp.array([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    c = B.xyxy_to_cxcywh(xyxy)
    np.testing.assert_allclose(c[0], [3, 6, 4, 8])
    np.testing.assert_allclose(B.cxcywh_to_xyxy(c), xyxy)


def test_iou_family_hand_values():
    a = jnp.array([0.0, 0.0, 2.0, 2.0])
    b = jnp.array([1.0, 1.0, 3.0, 3.0])
    eps = 1e-12
    # inter 1, union 7; enclosing 3×3 (area 9, c² 18); centres (1,1),(2,2): ρ² 2.
    assert float(B.bbox_iou(a, b, "iou", eps)) == pytest.approx(1 / 7, rel=1e-6)
    assert float(B.bbox_iou(a, b, "giou", eps)) == pytest.approx(1 / 7 - 2 / 9, rel=1e-6)
    assert float(B.bbox_iou(a, b, "diou", eps)) == pytest.approx(1 / 7 - 2 / 18, rel=1e-6)
    # Same aspect ratio: v = 0, CIoU = DIoU.
    assert float(B.bbox_iou(a, b, "ciou", eps)) == pytest.approx(1 / 7 - 2 / 18, rel=1e-6)
    # Aspect term: 2×1 vs 1×1 concentric: v = 4/π²(atan 1 − atan 2)², IoU = 1/2, ρ = 0.
    c = jnp.array([0.0, 0.0, 2.0, 1.0])
    d = jnp.array([0.5, 0.0, 1.5, 1.0])
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (v - 0.5 + 1)
    assert float(B.bbox_iou(c, d, "ciou", eps)) == pytest.approx(0.5 - alpha * v, rel=1e-5)


def test_iou_identical_disjoint_and_far():
    a = jnp.array([10.0, 10.0, 20.0, 30.0])
    assert float(B.bbox_iou(a, a, "ciou")) == pytest.approx(1.0, abs=1e-6)
    far = a + 1e5
    assert float(B.bbox_iou(a, far, "iou")) == 0.0
    # Far apart: DIoU → −1 (ρ² / c² → 1).
    assert float(B.bbox_iou(a, far, "diou")) == pytest.approx(-1.0, abs=1e-3)


def test_iou_broadcasting_shapes():
    b1 = jnp.zeros((3, 1, 4)) + jnp.array([0, 0, 1, 1.0])
    b2 = jnp.zeros((1, 5, 4)) + jnp.array([0, 0, 2, 2.0])
    assert B.bbox_iou(b1, b2, "giou").shape == (3, 5)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_iou_degenerate_boxes_finite_value_and_grad(kind):
    degenerate = jnp.array(
        [
            [5.0, 5.0, 5.0, 5.0],  # zero area
            [5.0, 5.0, 9.0, 5.0],  # zero height
            [5.0, 5.0, 5.0, 9.0],  # zero width
            [9.0, 9.0, 5.0, 5.0],  # inverted
            [5.0, 5.0 + 1e-7, 9.0, 5.0],  # height −1e-7 (ultralytics' h + eps hits 0)
            [0.0, 0.0, 1e6, 1e6],  # huge
        ]
    )
    other = jnp.array([5.0, 5.0, 5.0, 5.0])

    def f(x, y):
        return B.bbox_iou(x, y, kind).sum()

    for x, y in [(degenerate, other), (degenerate, degenerate), (other[None], degenerate)]:
        val, grads = jax.value_and_grad(f, argnums=(0, 1))(x, y)
        assert bool(jnp.isfinite(val)), (kind, x, y)
        assert all_finite(grads), (kind, x, y)


def test_make_anchors_matches_grid():
    pts, st = B.make_anchors([(2, 3), (1, 1)], [8, 16])
    assert pts.shape == (7, 2) and st.shape == (7, 1)
    np.testing.assert_allclose(pts[:3], [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]])
    np.testing.assert_allclose(pts[3], [0.5, 1.5])
    np.testing.assert_allclose(pts[6], [0.5, 0.5])
    np.testing.assert_allclose(st[:, 0], [8] * 6 + [16])
    with pytest.raises(ValueError, match="strides"):
        B.make_anchors([(2, 2)], [8, 16])


def test_dist2bbox_bbox2dist_roundtrip_and_clip():
    pts = jnp.array([[4.0, 4.0], [10.0, 2.0]])
    dist = jnp.array([[1.0, 2.0, 3.0, 0.5], [0.0, 0.0, 7.5, 1.0]])
    bxs = B.dist2bbox(dist, pts)
    np.testing.assert_allclose(bxs[0], [3, 2, 7, 4.5])
    np.testing.assert_allclose(B.bbox2dist(pts, bxs, 16), dist)
    # Clipped to [0, max − 0.01]: a far box side and a point outside its box.
    far = B.bbox2dist(pts[:1], jnp.array([[-100.0, 5.0, 6.0, 6.0]]), 16)
    np.testing.assert_allclose(far, [[15.99, 0.0, 2.0, 2.0]], rtol=1e-6)


def test_box_iou_matrix():
    a = jnp.array([[0.0, 0, 2, 2], [5, 5, 5, 5]])
    b = jnp.array([[1.0, 1, 3, 3], [0, 0, 2, 2]])
    m = B.box_iou_matrix(a, b)
    np.testing.assert_allclose(m, [[1 / 7, 1.0], [0.0, 0.0]], rtol=1e-6)


def test_iou_jit_equals_eager():
    k = jax.random.split(jax.random.PRNGKey(1), 2)
    xy = jax.random.uniform(k[0], (32, 2)) * 50
    wh = jax.random.uniform(k[1], (32, 2)) * 20
    b1 = jnp.concatenate([xy, xy + wh], -1)
    b2 = b1[::-1] + 1.0
    for kind in ["iou", "giou", "diou", "ciou"]:
        np.testing.assert_allclose(
            jax.jit(B.bbox_iou, static_argnums=2)(b1, b2, kind),
            B.bbox_iou(b1, b2, kind),
            rtol=1e-6,
            atol=1e-7,
        )
