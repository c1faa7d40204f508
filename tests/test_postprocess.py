"""jdet.postprocess: DFL decoding, fixed-size NMS against a NumPy reference (and the host NMS of
jdet.inference.host_nms, which runtimes outside JAX use), unletterbox."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jdet.boxes import make_anchors
from jdet.data.transforms import letterbox, unletterbox
from jdet.inference import host_nms
from jdet.postprocess import (
    INVALID_CLASS,
    Detections,
    decode_boxes,
    nms,
    postprocess,
    to_array,
)

# Shapes of the property test; fixed so each static-argument combination compiles once.
BATCH, ANCHORS, CLASSES = 2, 24, 3


def iou_f32(a: np.ndarray, b: np.ndarray) -> np.float32:
    """IoU of two xyxy boxes in f32, 0 for an empty union (as box_iou_matrix)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    inter_w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    inter_h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = np.float32(inter_w * inter_h)
    union = np.float32(area_a + area_b - inter)
    return inter / union if union > 0 else np.float32(0)


def reference_nms(boxes, scores, *, max_det, iou_threshold, conf_threshold, pre_nms_topk, agnostic):
    """Greedy per-class NMS for one image, boxes [A, 4], scores [A, C] → kept anchor indices."""
    best = scores.max(-1)
    cls = scores.argmax(-1)
    order = np.argsort(-best, kind="stable")[:pre_nms_topk]  # ties: lower index first
    keep: list[int] = []
    for i in order:
        if not best[i] > np.float32(conf_threshold):
            continue
        if any(
            (agnostic or cls[j] == cls[i])
            and iou_f32(boxes[i], boxes[j]) > np.float32(iou_threshold)
            for j in keep
        ):
            continue
        keep.append(int(i))
        if len(keep) == max_det:
            break
    return keep


def run_nms(boxes, scores, **kw) -> Detections:
    return nms(jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32), **kw)


def n_valid(det: Detections) -> np.ndarray:
    return np.asarray(det.valid).sum(-1)


def test_overlapping_boxes_keep_higher_score():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11]]])
    scores = np.array([[[0.6], [0.9]]])
    det = run_nms(boxes, scores, max_det=4, iou_threshold=0.45, conf_threshold=0.25)
    assert n_valid(det).tolist() == [1]
    np.testing.assert_array_equal(det.boxes[0, 0], [1, 1, 11, 11])
    np.testing.assert_allclose(det.scores[0, 0], 0.9)
    assert det.classes[0, 0] == 0
    # Padding rows are zero with class -1.
    np.testing.assert_array_equal(det.boxes[0, 1:], 0)
    np.testing.assert_array_equal(det.scores[0, 1:], 0)
    np.testing.assert_array_equal(det.classes[0, 1:], INVALID_CLASS)


def test_disjoint_boxes_same_class_both_kept_sorted():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]])
    scores = np.array([[[0.5], [0.8]]])
    det = run_nms(boxes, scores, max_det=3)
    assert n_valid(det).tolist() == [2]
    np.testing.assert_allclose(det.scores[0], [0.8, 0.5, 0.0])
    np.testing.assert_array_equal(det.boxes[0, :2], [[20, 20, 30, 30], [0, 0, 10, 10]])


def test_class_aware_vs_agnostic():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11]]])
    scores = np.array([[[0.9, 0.1], [0.1, 0.8]]])  # best classes 0 and 1
    aware = run_nms(boxes, scores, max_det=4)
    assert n_valid(aware).tolist() == [2]
    assert aware.classes[0, :2].tolist() == [0, 1]
    agnostic = run_nms(boxes, scores, max_det=4, class_agnostic=True)
    assert n_valid(agnostic).tolist() == [1]
    assert agnostic.classes[0, 0] == 0


def test_max_det_caps_valid_rows():
    rng = np.random.default_rng(0)
    xs = np.arange(50, dtype=np.float32) * 20  # 50 disjoint boxes
    boxes = np.stack([xs, xs, xs + 10, xs + 10], -1)[None]
    scores = rng.uniform(0.5, 1.0, (1, 50, 1))
    det = run_nms(boxes, scores, max_det=5)
    assert n_valid(det).tolist() == [5]
    np.testing.assert_allclose(det.scores[0], np.sort(scores[0, :, 0])[::-1][:5], rtol=1e-6)


def test_conf_threshold_is_strict():
    xs = np.arange(4, dtype=np.float32) * 20
    boxes = np.stack([xs, xs, xs + 10, xs + 10], -1)[None]
    scores = np.array([[[0.1], [0.25], [0.3], [0.9]]], np.float32)
    det = run_nms(boxes, scores, max_det=4, conf_threshold=0.25)
    # Like ultralytics, score must exceed the threshold: 0.25 itself is dropped.
    np.testing.assert_allclose(det.scores[0], [0.9, 0.3, 0.0, 0.0])
    assert np.all(np.asarray(det.scores)[np.asarray(det.valid)] > 0.25)


def test_zero_area_boxes_finite():
    boxes = np.array([[[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 10], [3, 3, 1, 1]]], np.float32)
    scores = np.full((1, 4, 2), 0.9, np.float32)
    det = jax.jit(functools.partial(nms, max_det=6))(jnp.asarray(boxes), jnp.asarray(scores))
    for leaf in (det.boxes, det.scores):
        assert np.all(np.isfinite(leaf))
    # IoU of empty boxes is 0, so none suppresses another.
    assert n_valid(det).tolist() == [4]


def test_nan_scores_never_kept():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[[np.nan], [0.6]]], np.float32)
    det = run_nms(boxes, scores, max_det=2)
    assert n_valid(det).tolist() == [1]
    np.testing.assert_allclose(det.scores[0, 0], 0.6)
    kept_boxes, kept_scores, _ = host_nms.nms(boxes[0], scores[0], max_det=2)
    np.testing.assert_array_equal(kept_boxes, [[20, 20, 30, 30]])
    np.testing.assert_allclose(kept_scores, [0.6])


def test_host_nms_zero_area_and_bad_shapes():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 10], [3, 3, 1, 1]], np.float32)
    kept, _, classes = host_nms.nms(boxes, np.full(4, 0.9, np.float32), max_det=6)
    assert len(kept) == 4 and classes.tolist() == [0, 0, 0, 0]  # empty boxes suppress nothing
    with pytest.raises(ValueError, match="boxes"):
        host_nms.nms(boxes[:, :3], np.ones(4))
    with pytest.raises(ValueError, match="max_det"):
        host_nms.nms(boxes, np.ones(4), max_det=0)


@given(
    corners=hnp.arrays(np.int32, (BATCH, ANCHORS, 2), elements=st.integers(0, 24)),
    sizes=hnp.arrays(np.int32, (BATCH, ANCHORS, 2), elements=st.integers(0, 12)),
    # XLA on CPU flushes subnormals to zero (a 1e-44 score is 0 there, not > 0): leave them out.
    scores=hnp.arrays(
        np.float32,
        (BATCH, ANCHORS, CLASSES),
        elements=st.floats(0, 1, width=32, allow_subnormal=False),
    ),
    iou_threshold=st.sampled_from([0.0, 0.3, 0.45, 0.7]),
    conf_threshold=st.sampled_from([0.0, 0.25, 0.5]),
    # Static arguments: each pair compiles once. (3, all) exercises the max_det cap, (30, 8)
    # the pre-NMS top-k cut.
    max_det_topk=st.sampled_from([(3, 1000), (30, 8)]),
    agnostic=st.booleans(),
)
def test_jit_matches_reference(
    corners, sizes, scores, iou_threshold, conf_threshold, max_det_topk, agnostic
):
    max_det, pre_nms_topk = max_det_topk
    # Integer coordinates keep areas exact in f32, so IoU ties break the same way in both.
    boxes = np.concatenate([corners, corners + sizes], -1).astype(np.float32)
    # nms is jitted with the thresholds traced, so only the static arguments recompile.
    det = nms(
        jnp.asarray(boxes),
        jnp.asarray(scores),
        iou_threshold=iou_threshold,
        conf_threshold=conf_threshold,
        max_det=max_det,
        pre_nms_topk=pre_nms_topk,
        class_agnostic=agnostic,
    )
    host = host_nms.batched_nms(
        boxes,
        scores,
        iou_threshold=iou_threshold,
        conf_threshold=conf_threshold,
        max_det=max_det,
        pre_nms_topk=pre_nms_topk,
        class_agnostic=agnostic,
    )
    for got, want in zip(host, (det.boxes, det.scores, det.valid)):
        np.testing.assert_array_equal(got, np.asarray(want))
    for b in range(BATCH):
        keep = reference_nms(
            boxes[b],
            scores[b],
            max_det=max_det,
            iou_threshold=iou_threshold,
            conf_threshold=conf_threshold,
            pre_nms_topk=pre_nms_topk,
            agnostic=agnostic,
        )
        n = len(keep)
        assert int(n_valid(det)[b]) == n
        assert np.all(np.asarray(det.valid[b, :n]))
        np.testing.assert_array_equal(det.boxes[b, :n], boxes[b, keep].reshape(n, 4))
        np.testing.assert_array_equal(det.scores[b, :n], scores[b, keep].max(-1))
        np.testing.assert_array_equal(det.classes[b, :n], scores[b, keep].argmax(-1))
        np.testing.assert_array_equal(det.boxes[b, n:], 0)
        np.testing.assert_array_equal(det.classes[b, n:], INVALID_CLASS)


def test_batched_equals_unbatched():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 30, (3, 12, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(1, 20, (3, 12, 2))], -1), jnp.float32)
    scores = jnp.asarray(rng.uniform(0, 1, (3, 12, 4)), jnp.float32)
    kw = {"max_det": 6, "iou_threshold": 0.3, "conf_threshold": 0.2, "pre_nms_topk": 10}
    jitted = nms(boxes, scores, **kw)
    for b in range(3):
        single = nms(boxes[b : b + 1], scores[b : b + 1], **kw)
        for batched_leaf, single_leaf in zip(jitted, single):
            np.testing.assert_array_equal(batched_leaf[b], single_leaf[0])


def test_output_shapes_via_eval_shape():
    boxes = jax.ShapeDtypeStruct((2, 5000, 4), jnp.float32)
    scores = jax.ShapeDtypeStruct((2, 5000, 7), jnp.float32)
    det = jax.eval_shape(functools.partial(nms, max_det=100), boxes, scores)
    assert det.boxes.shape == (2, 100, 4) and det.boxes.dtype == jnp.float32
    assert det.scores.shape == (2, 100) and det.scores.dtype == jnp.float32
    assert det.classes.shape == (2, 100) and det.classes.dtype == jnp.int32
    assert det.valid.shape == (2, 100) and det.valid.dtype == jnp.bool_
    out = jax.eval_shape(to_array, det)
    assert out.shape == (2, 100, 6)


def test_decode_boxes_hand_computed():
    # Bin 2 on every side at anchor (0.5, 0.5), stride 8: (0.5 ± 2) * 8.
    dist = jnp.full((1, 1, 4, 16), -1e4).at[..., 2].set(1e4)
    box = decode_boxes(dist, jnp.array([[0.5, 0.5]]), jnp.array([[8.0]]))
    np.testing.assert_allclose(box, [[[-12.0, -12.0, 20.0, 20.0]]], atol=1e-4)
    # Uniform logits: expectation (R - 1) / 2 = 1.5 bins per side.
    box = decode_boxes(jnp.zeros((1, 1, 4, 4)), jnp.array([[2.5, 1.5]]), jnp.array([[16.0]]))
    np.testing.assert_allclose(box, [[[16.0, 0.0, 64.0, 48.0]]], atol=1e-4)


def _refdet_like_outputs(rng, num_real_ways, num_ways=4, num_bins=8):
    anchors, strides = make_anchors([(4, 4), (2, 2)], [8, 16])
    num_anchors = anchors.shape[0]
    cls = rng.normal(0, 3, (2, num_anchors, num_ways)).astype(np.float32)
    cls[..., num_real_ways:] = -1e9  # padded ways, as RefDet emits them
    return {
        "dist": jnp.asarray(rng.normal(0, 2, (2, num_anchors, 4, num_bins)), jnp.float32),
        "cls": jnp.asarray(cls),
        "anchors": anchors,
        "strides": strides,
        "embed": jnp.zeros((2, num_anchors, 3)),  # extra keys are ignored
    }


def test_postprocess_equals_decode_then_nms_and_skips_padded_ways():
    outputs = _refdet_like_outputs(np.random.default_rng(2), num_real_ways=2)
    kw = {"max_det": 20, "iou_threshold": 0.5, "conf_threshold": 0.0}
    det = jax.jit(functools.partial(postprocess, **kw))(outputs)
    boxes = decode_boxes(outputs["dist"], outputs["anchors"], outputs["strides"])
    expected = nms(boxes, jax.nn.sigmoid(outputs["cls"]), **kw)
    jax.tree.map(np.testing.assert_allclose, det, expected)
    valid = np.asarray(det.valid)
    assert valid.any()
    assert np.all(np.asarray(det.classes)[valid] < 2)


def test_postprocess_all_ways_padded_keeps_nothing():
    outputs = _refdet_like_outputs(np.random.default_rng(3), num_real_ways=0)
    det = postprocess(outputs, max_det=5, iou_threshold=0.5, conf_threshold=0.0)
    assert not np.asarray(det.valid).any()


def test_to_array_layout():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]])
    scores = np.array([[[0.1, 0.7], [0.9, 0.2]]])
    rows = np.asarray(to_array(run_nms(boxes, scores, max_det=3)))
    assert rows.shape == (1, 3, 6)
    np.testing.assert_allclose(
        rows[0],
        [[20, 20, 30, 30, 0.9, 0], [0, 0, 10, 10, 0.7, 1], [0, 0, 0, 0, 0, -1]],
        rtol=1e-6,
    )


@pytest.mark.parametrize("frame_hw", [(480, 640), (640, 480), (37, 101), (320, 320)])
def test_unletterbox_round_trip(frame_hw):
    height, width = frame_hw
    size = 320
    frame_boxes = np.array(
        [[10, 20, 30, 35], [0, 0, width, height], [width / 3, height / 4, width / 2, height / 2]],
        np.float32,
    )
    image = np.zeros((height, width, 3), np.uint8)
    _, lb_boxes = letterbox(image, frame_boxes.copy(), size)
    back = unletterbox(lb_boxes, frame_hw, size)
    np.testing.assert_allclose(back, frame_boxes, atol=1e-3)
    # Works on batched [B, max_det, 4] arrays too.
    back = unletterbox(np.broadcast_to(lb_boxes, (2, 3, 4)), frame_hw, size)
    np.testing.assert_allclose(back, np.broadcast_to(frame_boxes, (2, 3, 4)), atol=1e-3)


def test_unletterbox_clips_to_frame():
    # A box spilling into the grey bars (and beyond the square) is clipped to the frame.
    back = unletterbox(np.array([[-50.0, -50.0, 400.0, 400.0]]), (480, 640), 320)
    np.testing.assert_allclose(back, [[0, 0, 640, 480]])
