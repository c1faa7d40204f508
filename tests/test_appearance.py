"""Appearance re-scoring (jdet.inference.appearance) and its options."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jdet.inference.appearance import (
    AppearanceScorer,
    bin_image,
    check_beta,
    histogram,
    reference_histogram,
    similarity,
)
from jdet.inference.pipeline import PredictOptions

RED, BLUE, GREY = (210, 30, 40), (40, 60, 200), (120, 120, 120)


def _photo(colour, h=90, w=120, seed=0):
    """A disk of `colour` on a green, textured background (the reference's own background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    photo = np.clip(np.array([60, 140, 70]) + rng.normal(0, 6, (h, w, 3)), 0, 255)
    photo[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < 25**2] = colour
    return photo.astype(np.uint8)


def _frame(h=120, w=200):
    """Grey ground with a red square at (20, 30)-(50, 60) and a blue one at (120, 40)-(150, 70)."""
    frame = np.full((h, w, 3), GREY, np.uint8)
    frame[30:60, 20:50] = RED
    frame[40:70, 120:150] = BLUE
    return frame


RED_BOX, BLUE_BOX = [20, 30, 50, 60], [120, 40, 150, 70]


def test_reference_histogram_is_the_objects_not_the_background():
    ref = reference_histogram([_photo(RED)])
    red = histogram(bin_image(np.full((4, 4, 3), RED, np.uint8)))
    green = histogram(bin_image(np.full((4, 4, 3), (60, 140, 70), np.uint8)))
    assert ref @ red > 0.8 and ref @ green < 0.1
    assert math.isclose(ref.sum(), 1.0)


def test_similarity_is_one_for_the_same_colours_and_zero_for_disjoint_ones():
    ref = reference_histogram([_photo(RED), _photo(RED, seed=1)])
    bins = bin_image(_frame())
    sims = similarity(bins, np.array([RED_BOX, BLUE_BOX, [0, 0, 10, 10]]), ref)
    assert sims[0] > 0.9 and sims[1] < 0.05 and sims[2] < 0.05
    # At half resolution the same boxes (in frame pixels) give the same answer.
    half = bin_image(_frame()[::2, ::2])
    np.testing.assert_allclose(
        similarity(half, np.array([RED_BOX, BLUE_BOX]), ref, 0.5), sims[:2], atol=0.05
    )
    # A box of zero width or outside the frame still measures one pixel: no NaN, no error.
    edge = similarity(bins, np.array([[199.5, 0, 199.5, 3], [500, 500, 510, 510]]), ref)
    assert np.isfinite(edge).all()


def test_the_box_that_looks_like_the_references_overtakes_a_stronger_distractor():
    scorer = AppearanceScorer([_photo(RED)], beta=2.0)
    dets = np.array([BLUE_BOX + [0.30], RED_BOX + [0.20]], np.float32)
    out = scorer.rescore(_frame(), dets)
    np.testing.assert_array_equal(out[0, :4], RED_BOX)
    assert out[0, 4] > 0.20 and out[1, 4] < 0.30
    assert out.shape == dets.shape


def test_beta_zero_and_empty_frames_change_nothing():
    dets = np.array([BLUE_BOX + [0.30], RED_BOX + [0.20]], np.float32)
    np.testing.assert_array_equal(
        AppearanceScorer([_photo(RED)], 0.0).rescore(_frame(), dets), dets
    )
    empty = np.zeros((0, 5), np.float32)
    assert AppearanceScorer([_photo(RED)], 2.0).rescore(_frame(), empty).shape == (0, 5)


def test_the_video_level_uses_only_frames_seen_so_far():
    """Causal: frame t's scores are the same whether or not later frames follow."""
    frames = [_frame(), _frame()[:, ::-1].copy(), _frame()]
    dets = [
        np.array([BLUE_BOX + [0.3], RED_BOX + [0.2]], np.float32),
        np.array([[50, 40, 80, 70, 0.5]], np.float32),  # the mirrored blue square
        np.array([RED_BOX + [0.4]], np.float32),
    ]
    full = AppearanceScorer([_photo(RED)], 2.0)
    outs = [full.rescore(f, d) for f, d in zip(frames, dets)]
    for t in range(len(frames)):
        prefix = AppearanceScorer([_photo(RED)], 2.0)
        for f, d in zip(frames[: t + 1], dets[: t + 1]):
            last = prefix.rescore(f, d)
        np.testing.assert_array_equal(last, outs[t])
    # Frame 2's level is the mean of the best-scored boxes of frames 0–2 (blue, blue, red):
    # its red box, the only one, gains.
    ref = reference_histogram([_photo(RED)])
    blue, red = similarity(bin_image(_frame()), np.array([BLUE_BOX, RED_BOX]), ref)
    level = max((2 * blue + red) / 3, 0.1)
    assert math.isclose(float(outs[2][0, 4]), 0.4 * (red / level) ** 2, rel_tol=1e-5)


def test_high_resolution_frames_are_binned_at_most_640_wide():
    big = np.kron(_frame(), np.ones((8, 8, 1), np.uint8))  # 1600 × 960
    dets = np.array(
        [
            np.array(BLUE_BOX + [0]) * 8 + [0, 0, 0, 0, 0.3],
            np.array(RED_BOX + [0]) * 8 + [0, 0, 0, 0, 0.2],
        ],
        np.float32,
    )
    out = AppearanceScorer([_photo(RED)], 2.0).rescore(big, dets)
    np.testing.assert_array_equal(out[0, :4], dets[1, :4])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_appearance_values_name_the_option(bad):
    with pytest.raises(ValueError, match="appearance must be a finite number >= 0"):
        check_beta(bad)
    with pytest.raises(ValueError, match="appearance"):
        PredictOptions(appearance=bad)
    with pytest.raises(ValueError, match="reference photo"):
        reference_histogram([])


def test_predict_flag_and_config_name_the_option(tmp_path, capsys):
    from jdet import predict
    from jdet.config import base_config, finalize

    argv = ["--checkpoint", "r", "--samples", "s", "--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit):
        predict.main([*argv, "--appearance", "-1"])
    assert "--appearance must be a finite number >= 0" in capsys.readouterr().err
    from jdet import evaluate

    assert evaluate.main(["--workdir", str(tmp_path), "--appearance", "nan"]) == 2
    assert "--appearance must be a finite number >= 0" in capsys.readouterr().err
    c = base_config()
    c.eval.appearance = float("nan")
    with pytest.raises(ValueError, match="eval.appearance must be"):
        finalize(c)


def test_a_fixed_level_ignores_the_videos_history():
    ref = reference_histogram([_photo(RED)])
    dets = np.array([BLUE_BOX + [0.3], RED_BOX + [0.2]], np.float32)
    c = similarity(bin_image(_frame()), dets, ref)
    fixed = AppearanceScorer([_photo(RED)], 2.0, level=0.5)
    for _ in range(3):  # the same answer every frame: no running mean
        out = fixed.apply(c, dets)
        np.testing.assert_allclose(out[0, 4], 0.2 * (c[1] / 0.5) ** 2, rtol=1e-5)
    np.testing.assert_array_equal(fixed.rescore(_frame(), dets), out)
