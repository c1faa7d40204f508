"""Temporal decisions (jdet.inference.temporal) on hand-made score and box sequences."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jdet.inference.temporal import (
    CausalTracker,
    TemporalOptions,
    decide,
    decide_all,
    from_mapping,
    start_threshold,
)
from jdet.inference.tracks import TrackLinker
from jdet.submission import submission_from_detections


def _box(t: int, v: float = 2.0) -> list[float]:
    """The object's box at frame t: 20×20 px moving v px per frame to the right."""
    return [10.0 + v * t, 30.0, 30.0 + v * t, 50.0]


def _seq(scores, frames=None, v: float = 2.0) -> dict[int, np.ndarray]:
    """{frame: [n, 5]}: one box per frame with that score, none where the score is None."""
    frames = range(len(scores)) if frames is None else frames
    return {
        f: np.array([[*_box(f, v), s]]) if s is not None else np.zeros((0, 5))
        for f, s in zip(frames, scores)
    }


def _opts(**kw) -> TemporalOptions:
    return TemporalOptions(**{"threshold": 0.5, **kw})


BOTH = pytest.mark.parametrize("mode", ["offline", "causal"])


def test_frame_mode_is_the_per_frame_threshold():
    dets = _seq([0.6, 0.2, None, 0.9])
    assert decide(dets, _opts(mode="frame")) == submission_from_detections({"v": dets}, 0.5)["v"]
    assert sorted(decide(dets, _opts(mode="frame"))) == [0, 3]


@BOTH
def test_two_frame_miss_is_filled(mode):
    dets = _seq([0.9, 0.9, None, 0.1, 0.9, 0.9])
    without = decide(dets, _opts(mode=mode))
    assert sorted(without) == [0, 1, 4, 5]
    got = decide(dets, _opts(mode=mode, max_gap=2))
    assert sorted(got) == [0, 1, 2, 3, 4, 5]
    if mode == "offline":  # interpolated between the ends: exactly the moving box
        for f in (2, 3):
            np.testing.assert_allclose(got[f], _box(f))
    else:  # causal cannot know the object comes back: the last box, held
        assert got[2] == got[3] == tuple(_box(1))
    # A longer miss ends the interval at its last detection: no trailing filled frames.
    dets = _seq([0.9, 0.9, None, None, None, 0.9])
    assert sorted(decide(dets, _opts(mode="offline", max_gap=2))) == [0, 1, 5]


@BOTH
def test_one_frame_blip_is_dropped(mode):
    dets = _seq([0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1])
    got = decide(dets, _opts(mode=mode, min_length=2))
    if mode == "offline":
        assert sorted(got) == [5, 6, 7]
    else:  # reported from the interval's second detection on
        assert sorted(got) == [6, 7]


@BOTH
def test_hysteresis_keeps_an_interval_alive_below_the_start_threshold(mode):
    dets = _seq([0.3, 0.6, 0.35, 0.3, 0.2, 0.35])
    assert sorted(decide(dets, _opts(mode=mode))) == [1]
    # Continue threshold 0.5 × 0.5 = 0.25: frames 2, 3 continue, 4 ends it, 5 cannot restart.
    assert sorted(decide(dets, _opts(mode=mode, keep_ratio=0.5))) == [1, 2, 3]


@BOTH
def test_association_follows_the_object_past_a_stronger_distractor(mode):
    dets = _seq([0.9, 0.8, 0.7, 0.7])
    far = [400.0, 300.0, 420.0, 320.0]
    for f in (2, 3):  # a distractor scores higher, far away
        dets[f] = np.concatenate([dets[f], [[*far, 0.95]]])
    plain = decide(dets, _opts(mode=mode))
    assert plain[2] == tuple(far)
    tracked = decide(dets, _opts(mode=mode, assoc_iou=0.3))
    assert all(tracked[f] == tuple(_box(f)) for f in range(4))


def _distracted(n: int = 12) -> dict[int, np.ndarray]:
    """The object (0.6 on every frame) ranked second on every frame behind a distractor at a
    new place each frame (0.8: a one-frame track each time)."""
    dets = _seq([0.6] * n)
    for f in range(n):
        far = [300.0 + 40 * f, 200.0, 330.0 + 40 * f, 230.0]
        dets[f] = np.concatenate([[[*far, 0.8]], dets[f]])
    return dets


@BOTH
def test_track_rescoring_prefers_the_object_over_one_frame_winners(mode):
    dets = _distracted()
    plain = decide(dets, _opts(mode=mode, threshold=0.2))
    assert all(plain[f] != tuple(_box(f)) for f in range(12))
    tracked = decide(dets, _opts(mode=mode, threshold=0.2, link=3, link_prior=2.0))
    # Each distractor scores 0.8 / (1 + 2) = 0.27; the object 0.6·n / (n + 2) over its n
    # frames: 0.51 offline (n = 12) on every frame; causal, from its second frame (0.3) on.
    first = 0 if mode == "offline" else 1
    assert all(tracked[f] == tuple(_box(f)) for f in range(first, 12))
    assert all(tracked[f] != tuple(_box(f)) for f in range(first))


def test_track_linker_scores_by_the_mean_of_the_track_so_far():
    linker = TrackLinker(k=2, link_iou=0.3, max_gap=0)  # prior 0: the plain mean
    d0, ids0 = linker.update(np.array([[*_box(0), 0.2], [0, 0, 5, 5, 0.9]]))
    d1, ids1 = linker.update(np.array([[*_box(1), 0.8], [100, 100, 105, 105, 0.1]]))
    assert ids1[0] == ids0[1] and ids1[1] not in ids0  # same object, same track; a new one
    np.testing.assert_allclose(d1[:, 4], [0.5, 0.1])  # (0.2 + 0.8) / 2, its own score
    # The box at (0, 0) missed frame 1 with max_gap 0: its track is closed, a new one starts.
    _, ids2 = linker.update(np.array([[0, 0, 5, 5, 0.9]]))
    assert ids2[0] not in (*ids0, *ids1)
    # Only the k best boxes of a frame are kept.
    assert len(linker.update(np.array([[0, 0, 1, 1, s] for s in (0.1, 0.5, 0.3)]))[0]) == 2


def test_adaptive_threshold_follows_the_videos_score_scale():
    scores = [0.05, 0.06, 0.3, 0.32, 0.31, 0.05, 0.04, 0.33, 0.06]
    o = _opts(mode="offline", threshold=0.0, adaptive=True, zscore=0.5)
    got = decide(_seq(scores), o)
    assert sorted(got) == [2, 3, 4, 7]
    # The same video with every score ×0.3: a fixed 0.25 would find nothing, adaptive the same.
    assert decide(_seq([0.3 * s for s in scores]), o) == got
    assert decide(_seq([0.3 * s for s in scores]), _opts(threshold=0.25)) == {}
    # The cap: a z-score above every score still reports the best frame.
    assert sorted(decide(_seq(scores), o.__class__(**{**o.__dict__, "zscore": 50.0}))) == [7]


def test_start_threshold_floor_and_cap():
    s = np.array([0.1, 0.2, 0.3])
    assert start_threshold(s, _opts()) == 0.5
    assert start_threshold(s, _opts(threshold=0.0, adaptive=True, zscore=0.0)) == pytest.approx(0.2)
    assert start_threshold(s, _opts(threshold=0.0, adaptive=True, zscore=9.0)) == 0.3  # max
    assert start_threshold(s, _opts(threshold=0.35, adaptive=True, zscore=9.0)) == 0.35  # floor


def test_offline_smoothing_has_no_lag_on_steady_motion_and_causal_lags():
    dets = _seq([0.9] * 20)
    off = decide(dets, _opts(mode="offline", smooth=0.5))
    for f in range(8, 12):  # the interior: forward lag and backward lead cancel
        np.testing.assert_allclose(off[f], _box(f), atol=1e-2)
    causal = decide(dets, _opts(mode="causal", smooth=0.5))
    assert causal[10][0] < _box(10)[0] - 1.0  # behind the object: 2 px/frame × w/(1-w)


def test_noisy_boxes_are_smoothed():
    rng = np.random.default_rng(0)
    dets = _seq([0.9] * 40, v=1.0)
    for f in dets:
        dets[f][0, :4] += rng.normal(0, 2.0, 4)
    err = {
        w: np.mean(
            [
                np.abs(np.array(b) - _box(f, 1.0)).mean()
                for f, b in decide(dets, _opts(mode="offline", smooth=w)).items()
            ]
        )
        for w in (0.0, 0.6)
    }
    assert err[0.6] < 0.7 * err[0.0], err


@BOTH
def test_stride_fills_the_frames_between_processed_frames_of_an_interval(mode):
    dets = _seq([0.9, 0.9, 0.9, 0.1, 0.9], frames=[0, 5, 10, 15, 20])
    got = decide(dets, _opts(mode=mode))
    if mode == "offline":  # interpolated, from the first detection to the last
        assert sorted(got) == [*range(0, 11), 20]
        np.testing.assert_allclose(got[7], _box(7))
    else:  # each skipped frame shows the box reported before it, held, until frame 15 misses
        assert sorted(got) == [*range(0, 15), 20]
        assert got[7] == tuple(_box(5)) and got[14] == tuple(_box(10))


_scores = st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=1, max_size=30)
_options = st.builds(
    TemporalOptions,
    mode=st.just("causal"),
    threshold=st.floats(0.0, 1.0),
    adaptive=st.booleans(),
    zscore=st.floats(-2.0, 3.0),
    keep_ratio=st.floats(0.1, 1.0),
    assoc_iou=st.sampled_from([0.0, 0.3]),
    max_gap=st.integers(0, 4),
    min_length=st.integers(1, 4),
    smooth=st.floats(0.0, 0.9),
    link=st.sampled_from([0, 2]),
)


@given(scores=_scores, options=_options, cut=st.integers(0, 30), stride=st.integers(1, 3))
def test_causal_output_never_depends_on_future_frames(scores, options, cut, stride):
    frames = [stride * i for i in range(len(scores))]
    full = decide(_seq(scores, frames), options)
    last = frames[min(cut, len(frames) - 1)]
    truncated = decide(_seq(scores[: min(cut, len(frames) - 1) + 1], frames), options)
    assert truncated == {f: b for f, b in full.items() if f <= last}


@given(scores=_scores, options=_options)
def test_offline_reports_a_superset_of_nothing_and_only_finite_boxes(scores, options):
    for mode in ("offline", "causal"):
        got = decide(_seq(scores), TemporalOptions(**{**options.__dict__, "mode": mode}))
        assert all(math.isfinite(x) for b in got.values() for x in b)
        assert all(0 <= f < len(scores) for f in got)


def test_tracker_rejects_frames_out_of_order():
    tracker = CausalTracker(_opts())
    tracker.update(3, np.zeros((0, 5)))
    with pytest.raises(ValueError, match="frames must increase"):
        tracker.update(3, np.zeros((0, 5)))


def test_decide_all_keeps_every_video():
    out = decide_all({"a": _seq([0.9, 0.9]), "b": _seq([0.1])}, _opts(mode="causal"))
    assert sorted(out) == ["a", "b"] and out["b"] == {}


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(max_gap=-1), "max_gap"),
        (dict(zscore=float("nan")), "zscore"),
        (dict(threshold=1.5), "threshold"),
        (dict(keep_ratio=0.0), "keep_ratio"),
        (dict(min_length=0), "min_length"),
        (dict(smooth=1.0), "smooth"),
        (dict(mode="online"), "mode"),
        (dict(max_gap=1.5), "max_gap"),
        (dict(link=-1), "link"),
        (dict(link_iou=0.0), "link_iou"),
        (dict(link_prior=-1.0), "link_prior"),
    ],
)
def test_bad_options_name_the_option(change, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        TemporalOptions(**change)
    with pytest.raises(ValueError, match=rf"^eval\.temporal\.{name} "):
        from_mapping(change, prefix="eval.temporal.")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"^eval\.temporal\.max_gapp: no such option"):
        from_mapping({"max_gapp": 2}, prefix="eval.temporal.")


def test_malformed_detections_name_video_and_frame():
    with pytest.raises(ValueError, match="video 'v' frame 1"):
        decide_all({"v": {0: np.zeros((0, 5)), 1: np.array([[0, 0, 1, 1, np.nan]])}})


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--max-gap", "-1"], "--max-gap"),
        (["--zscore", "nan"], "--zscore"),
        (["--conf", "2"], "--conf"),
        (["--tile", "-1"], "--tile"),
        (["--tile-overlap", "1"], "--tile-overlap"),
    ],
)
def test_predict_cli_names_a_bad_flag(flags, named, tmp_path, capsys):
    from jdet import predict

    argv = ["--checkpoint", str(tmp_path), "--samples", str(tmp_path), "--out", "x.json"]
    with pytest.raises(SystemExit) as exit_info:
        predict.main([*argv, *flags])
    assert exit_info.value.code == 2
    assert f"error: {named} must" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temporal.max_gap", -2, "eval.temporal.max_gap must be >= 0"),
        ("temporal.mode", "online", "eval.temporal.mode must be one of"),
        ("tile", -1, "eval.tile must be >= 0"),
    ],
)
def test_config_names_a_bad_eval_field(field, value, message):
    from jdet.config import base_config, validate

    config = base_config()
    name = field.rpartition(".")[2]
    target = config.eval.temporal if field.startswith("temporal.") else config.eval
    target[name] = value
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_a_runs_eval_section_gives_its_decisions():
    import ml_collections

    from jdet.inference.temporal import from_eval_config

    old = ml_collections.ConfigDict({"conf_threshold": 0.3})  # a run saved before eval.temporal
    assert from_eval_config(old) == TemporalOptions(mode="frame", threshold=0.3)
    section = ml_collections.ConfigDict({"temporal": {"mode": "causal", "max_gap": 3}})
    assert from_eval_config(section) == TemporalOptions(mode="causal", max_gap=3)
    section.temporal.max_gap = -1
    with pytest.raises(ValueError, match=r"^eval\.temporal\.max_gap must be >= 0"):
        from_eval_config(section)
