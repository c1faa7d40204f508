"""jdet.evaluation: ST-IoU hand cases, COCO mAP on analytically known cases; the jdet.evaluate CLI.

COCO AP expectations are computed by hand with COCO's 101-point rule (`_coco_ap101`): precision
made non-increasing from the right, sampled at recall 0, 0.01, …, 1 (the first detection whose
recall reaches each point; 0 beyond the reached recall), averaged over the 101 points.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdet import evaluate
from jdet.evaluation.coco import coco_map
from jdet.evaluation.st_iou import box_iou, per_video_table, st_iou, st_iou_video
from jdet.submission import submission_from_detections

BOX = (100.0, 100.0, 140.0, 120.0)  # 40 × 20


def _shift(box, dx=0.0, dy=0.0):
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def _det(*rows) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _coco_ap101(tp_by_score: list[bool], num_gt: int) -> float:
    """COCO's 101-point AP of one category from TP flags sorted by descending score."""
    tp = np.cumsum(tp_by_score)
    fp = np.cumsum(~np.asarray(tp_by_score))
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # non-increasing from the right
    out = np.zeros(101)
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    ok = idx < len(recall)
    out[ok] = precision[idx[ok]]
    return float(out.mean())


# ---------------------------------------------------------------------------------- ST-IoU


def test_box_iou_hand_values():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)  # no +1 pixel
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # 0/0 guarded


def test_st_iou_perfect_is_one():
    gt = {f: _shift(BOX, f) for f in range(20)}
    assert st_iou_video(gt, dict(gt)) == 1.0


def test_st_iou_disjoint_frames_is_zero():
    gt = {f: BOX for f in range(10)}
    pred = {f: BOX for f in range(10, 20)}
    assert st_iou_video(gt, pred) == 0.0


def test_st_iou_half_width_shift_is_one_third():
    gt = {f: BOX for f in range(7)}
    pred = {f: _shift(BOX, dx=20.0) for f in range(7)}  # half of the 40 px width
    assert st_iou_video(gt, pred) == pytest.approx(1 / 3)


def test_st_iou_extra_background_frames_count_in_union():
    gt = {f: BOX for f in range(10)}
    pred = dict(gt) | {f: BOX for f in range(100, 105)}
    assert st_iou_video(gt, pred) == pytest.approx(10 / 15)
    # missed frames cost the same: 10 GT frames, only 4 predicted (perfectly)
    assert st_iou_video(gt, {f: BOX for f in range(4)}) == pytest.approx(4 / 10)


def test_st_iou_empty_cases_follow_original():
    # it-dainb/zalo_ai_2025@075f362 src/tests/test_st_iou.py::test_empty_detections
    assert st_iou_video({0: BOX}, {}) == 0.0
    assert st_iou_video({}, {0: BOX}) == 0.0
    assert st_iou_video({}, {}) == 0.0


def test_st_iou_mean_over_gt_videos():
    gt = {"a": {f: BOX for f in range(10)}, "b": {f: BOX for f in range(4)}, "c": {}}
    pred = {"a": dict(gt["a"]), "b": {f: BOX for f in range(2)}}  # "c" absent: no predictions
    mean, per_video = st_iou(gt, pred)
    assert per_video == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})
    assert mean == pytest.approx(1.5 / 3)
    assert st_iou({}, {}) == (0.0, {})


def test_st_iou_rejects_unknown_videos():
    with pytest.raises(ValueError, match="'ghost'"):
        st_iou({"a": {0: BOX}}, {"a": {}, "ghost": {0: BOX}})


_coord = st.floats(0, 200, allow_nan=False, width=32)
_boxes = st.tuples(_coord, _coord, st.floats(0.5, 60, width=32), st.floats(0.5, 60, width=32)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
)
_tracks = st.dictionaries(st.integers(0, 30), _boxes, max_size=12)


@settings(max_examples=40)
@given(_tracks, _tracks)
def test_st_iou_bounds_and_symmetry(gt, pred):
    value = st_iou_video(gt, pred)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert value == pytest.approx(st_iou_video(pred, gt))
    assert value <= len(gt.keys() & pred.keys()) / max(len(gt.keys() | pred.keys()), 1) + 1e-12


# -------------------------------------------------------------------------------------- mAP


def _gt_set(n_frames: int = 4) -> dict:
    """Two videos, one GT box on each of the first n_frames frames."""
    return {
        "v0": {f: _shift(BOX, dx=3 * f) for f in range(n_frames)},
        "v1": {f: _shift(BOX, dy=2 * f) for f in range(n_frames)},
    }


def test_map_perfect_is_one():
    gt = _gt_set()
    dets = {v: {f: _det((*b, 0.9)) for f, b in boxes.items()} for v, boxes in gt.items()}
    result = coco_map(gt, dets)
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP50-95"] == pytest.approx(1.0)
    np.testing.assert_allclose(result["precision_curve"], 1.0)
    np.testing.assert_allclose(result["recall_points"], np.linspace(0, 1, 101))
    assert result["precision_curve"].shape == result["recall_points"].shape == (101,)
    assert (result["num_images"], result["num_gt"], result["num_det"]) == (8, 8, 8)
    assert result["no_gt"] is False


def test_map_wrong_locations_is_zero():
    gt = _gt_set()
    dets = {v: {f: _det((*_shift(b, 300), 0.9)) for f, b in bs.items()} for v, bs in gt.items()}
    result = coco_map(gt, dets)
    assert result["mAP50"] == 0.0 and result["mAP50-95"] == 0.0
    np.testing.assert_array_equal(result["precision_curve"], 0.0)


def test_map_half_found_no_false_positives():
    gt = _gt_set(4)  # 8 GT boxes
    dets = {"v0": {f: _det((*b, 0.9 - 0.1 * f)) for f, b in gt["v0"].items()}}  # 4 TPs, no FP
    result = coco_map(gt, dets)
    assert _coco_ap101([True] * 4, 8) == pytest.approx(51 / 101)  # recall 0.5 at precision 1
    assert result["mAP50"] == pytest.approx(51 / 101)
    assert result["mAP50-95"] == pytest.approx(51 / 101)
    np.testing.assert_array_equal(result["precision_curve"][:51], 1.0)
    np.testing.assert_array_equal(result["precision_curve"][51:], 0.0)


def test_map_false_positive_ranked_first():
    gt = _gt_set(2)  # 4 GT boxes
    # the top-scoring box is on a GT frame but in the wrong place; then the 4 true positives
    dets = {v: {f: _det((*b, 0.5 + 0.1 * f)) for f, b in bs.items()} for v, bs in gt.items()}
    dets["v0"][0] = np.concatenate([dets["v0"][0], _det((*_shift(BOX, 300), 0.99))])
    expected = _coco_ap101([False, True, True, True, True], 4)
    assert expected == pytest.approx(0.8)  # precision 4/5 at recall 1, flat after smoothing
    result = coco_map(gt, dets)
    assert result["mAP50"] == pytest.approx(expected)


def test_map_false_positive_between_true_positives_on_background_frame():
    gt = {"v0": {0: BOX, 1: BOX}}
    dets = {"v0": {0: _det((*BOX, 0.9)), 5: _det((*BOX, 0.8)), 1: _det((*BOX, 0.7))}}
    expected = _coco_ap101([True, False, True], 2)
    assert expected == pytest.approx((51 + 50 * 2 / 3) / 101)
    result = coco_map(gt, dets)
    assert result["num_images"] == 3  # frame 5 is an image without annotations
    assert result["mAP50"] == pytest.approx(expected)


def test_map_iou_thresholds_average():
    # IoU 0.72 with the GT: a true positive at 0.50 … 0.70 (5 of 10 thresholds)
    gt = {"v0": {0: (0.0, 0.0, 100.0, 100.0)}}
    result = coco_map(gt, {"v0": {0: _det((0.0, 0.0, 100.0, 72.0, 0.9))}})
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP50-95"] == pytest.approx(0.5)


def test_map_frames_restrict_evaluation():
    gt = {"v0": {0: BOX, 1: BOX, 2: BOX}}
    dets = {"v0": {0: _det((*BOX, 0.9))}}
    # only frames 0 and 3 evaluated: the GT on frames 1 and 2 is left out
    result = coco_map(gt, dets, frames={"v0": [0, 3]})
    assert (result["num_images"], result["num_gt"]) == (2, 1)
    assert result["mAP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not evaluated"):
        coco_map(gt, {"v0": {7: _det((*BOX, 0.9))}}, frames={"v0": [0]})


def test_map_empty_cases():
    gt = _gt_set(2)
    no_dets = coco_map(gt, {"v0": {0: np.zeros((0, 5), np.float32)}})
    assert no_dets["mAP50"] == 0.0 and no_dets["mAP50-95"] == 0.0
    assert no_dets["num_det"] == 0 and no_dets["no_gt"] is False
    no_gt = coco_map({"v0": {}}, {"v0": {3: _det((*BOX, 0.9))}})
    assert no_gt["no_gt"] is True and no_gt["mAP50"] == 0.0 and no_gt["mAP50-95"] == 0.0
    assert (no_gt["num_images"], no_gt["num_gt"], no_gt["num_det"]) == (1, 0, 1)
    assert all(np.isfinite(no_gt["precision_curve"]))
    assert coco_map({}, {})["num_images"] == 0


def test_map_rejects_bad_detections(capsys):
    with pytest.raises(ValueError, match="'ghost'"):
        coco_map({"v0": {0: BOX}}, {"ghost": {0: _det((*BOX, 0.9))}})
    with pytest.raises(ValueError, match=r"\[n, 5\]"):
        coco_map({"v0": {0: BOX}}, {"v0": {0: np.zeros((1, 4))}})
    coco_map({"v0": {0: BOX}}, {"v0": {0: _det((*BOX, 0.9))}})
    assert capsys.readouterr().out == ""  # faster-coco-eval is silent


# ------------------------------------------------------------------------------ submission


def test_submission_from_detections_keeps_top_box_over_threshold():
    dets = {
        "a": {
            0: _det((0, 0, 10, 10, 0.3), (20, 20, 30, 30, 0.8), (40, 40, 50, 50, 0.5)),
            1: _det((0, 0, 10, 10, 0.2)),  # below threshold: frame left out
            2: _det((0, 0, 10, 10, 0.25)),  # exactly at the threshold: kept
            3: np.zeros((0, 5), np.float32),
        },
        "b": {0: _det((0, 0, 10, 10, 0.1))},
    }
    tracks = submission_from_detections(dets)
    assert tracks == {"a": {0: (20.0, 20.0, 30.0, 30.0), 2: (0.0, 0.0, 10.0, 10.0)}, "b": {}}
    assert submission_from_detections(dets, conf_threshold=0.6) == {
        "a": {0: (20.0, 20.0, 30.0, 30.0)},
        "b": {},
    }


def test_per_video_table_lists_videos_and_mean():
    gt = {"Backpack_0": {0: BOX, 1: BOX}, "Person_3": {}}
    table = per_video_table(gt, {"Backpack_0": {0: BOX}})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["video_id", "GT", "frames"]
    assert lines[1].split() == ["Backpack_0", "2", "1", "1", "0.5000"]
    assert lines[2].split() == ["Person_3", "0", "0", "0", "0.0000"]
    assert lines[-1].split() == ["mean", "(2", "videos)", "0.2500"]


# -------------------------------------------------------------------------------------- CLI


def _video(vid, key, boxes):
    bboxes = [
        {"frame": f, "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]} for f, b in boxes.items()
    ]
    return {"video_id": vid, key: [{"bboxes": bboxes}] if bboxes else []}


@pytest.fixture
def files(tmp_path):
    annotations = tmp_path / "annotations.json"
    gt = {"Backpack_0": {f: BOX for f in range(10)}, "Person_3": {f: BOX for f in range(4)}}
    annotations.write_text(json.dumps([_video(v, "annotations", b) for v, b in gt.items()]))
    submission = tmp_path / "submission.json"
    pred = {"Backpack_0": {f: BOX for f in range(15)}, "Person_3": {}}  # 10/15 and 0
    submission.write_text(json.dumps([_video(v, "detections", b) for v, b in pred.items()]))
    return annotations, submission


def test_cli_prints_table_and_mean(files, capsys):
    annotations, submission = files
    code = evaluate.main(["--annotations", str(annotations), "--submission", str(submission)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Backpack_0" in out and "Person_3" in out
    assert "0.6667" in out
    assert "mean ST-IoU: 0.3333" in out


def test_cli_samples_root_adds_negative_videos(tmp_path, files, capsys):
    annotations, submission = files
    root = tmp_path / "split"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotations.json").write_text(annotations.read_text())
    for vid in ("Backpack_0", "Person_3", "Bike_1"):
        (root / "samples" / vid).mkdir(parents=True)
    code = evaluate.main(["--samples", str(root), "--submission", str(submission)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Bike_1" in out  # a negative video with no entry in annotations.json: scores 0
    assert "mean ST-IoU: 0.2222 over 3 videos" in out


@pytest.mark.parametrize(
    "content, needle",
    [
        ('[{"video_id": "Backpack_0", "detections": [{"boxes": []}]}]', "bboxes"),
        (
            json.dumps([_video("Backpack_0", "detections", {1: (50, 0, 10, 10)})]),
            "x2 < x1",
        ),
        ('{"video_id": "Backpack_0", "detections": []}', "list"),
        ('[{"video_id": "Backpack_0", "detections": [', "JSON"),
        ('[{"video_id": "Ghost_9", "detections": []}]', "Ghost_9"),
    ],
)
def test_cli_malformed_submission_returns_2(files, tmp_path, capsys, content, needle):
    annotations, _ = files
    bad = tmp_path / "bad_submission.json"
    bad.write_text(content)
    code = evaluate.main(["--annotations", str(annotations), "--submission", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "bad_submission.json" in err and needle in err


def test_cli_missing_annotations_returns_2(tmp_path, files, capsys):
    _, submission = files
    code = evaluate.main(["--samples", str(tmp_path / "nowhere"), "--submission", str(submission)])
    err = capsys.readouterr().err
    assert code == 2 and "annotations.json" in err


def _pycocotools_map(gt, detections):
    """mAP50 / mAP50-95 computed by pycocotools itself on the same images and boxes."""
    cocotools = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    images, annotations, results = [], [], []
    for video_id, boxes in gt.items():
        for frame in sorted(set(boxes) | set(detections.get(video_id, {}))):
            images.append({"id": len(images) + 1})
            if frame in boxes:
                x1, y1, x2, y2 = boxes[frame]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": len(images),
                        "category_id": 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            for x1, y1, x2, y2, s in detections.get(video_id, {}).get(frame, np.zeros((0, 5))):
                results.append(
                    {
                        "image_id": len(images),
                        "category_id": 1,
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(s),
                    }
                )
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = cocotools.COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = cocoeval.COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1], ev.stats[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools_on_random_set(seed):
    rng = np.random.default_rng(seed)
    gt, detections = {}, {}
    for v in range(3):
        vid = f"v{v}"
        gt[vid], detections[vid] = {}, {}
        for frame in range(12):
            if rng.random() < 0.7:  # object present
                x, y = rng.uniform(0, 200, 2)
                w, h = rng.uniform(8, 120, 2)
                gt[vid][frame] = (x, y, x + w, y + h)
            dets = []
            if frame in gt[vid] and rng.random() < 0.8:  # a jittered true detection
                box = np.array(gt[vid][frame]) + rng.normal(0, 6, 4)
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                dets.append([*box, rng.uniform(0.2, 1.0)])
            for _ in range(rng.integers(0, 3)):  # false positives anywhere
                x, y = rng.uniform(0, 250, 2)
                dets.append([x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60), rng.random()])
            if dets:
                detections[vid][frame] = np.array(dets, np.float32)
    want50, want = _pycocotools_map(gt, detections)
    got = coco_map(gt, detections)
    assert got["mAP50"] == pytest.approx(want50, abs=1e-6)
    assert got["mAP50-95"] == pytest.approx(want, abs=1e-6)
    assert 0.0 < got["mAP50"] < 1.0  # a non-trivial case


def test_detections_round_trip_through_npz(tmp_path):
    from jdet.submission import load_detections, save_detections

    dets = {
        "a_0": {3: np.array([[1, 2, 3, 4, 0.5]], np.float32), 0: np.zeros((0, 5), np.float32)},
        "b_1": {7: np.array([[0, 0, 9, 9, 0.9], [1, 1, 2, 2, 0.1]], np.float32)},
    }
    save_detections(tmp_path / "d.npz", dets)
    back = load_detections(tmp_path / "d.npz")
    assert {v: list(f) for v, f in back.items()} == {"a_0": [0, 3], "b_1": [7]}
    for v, frames in dets.items():
        for f, d in frames.items():
            np.testing.assert_array_equal(back[v][f], d)
