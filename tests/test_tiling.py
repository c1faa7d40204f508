"""Tiled inference (jdet.inference.tiling): the crops and the merge of their boxes."""

import numpy as np
import pytest

from jdet.inference.pipeline import PredictOptions
from jdet.inference.tiling import cut_by_edge, merge, tile_grid


@pytest.mark.parametrize("h, w, tile, overlap", [(360, 640, 256, 0.25), (100, 90, 64, 0.5)])
def test_grid_covers_the_frame_with_the_overlap(h, w, tile, overlap):
    crops = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in crops.astype(int):
        assert x2 - x1 <= tile and y2 - y1 <= tile and x1 >= 0 and y1 >= 0
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert crops[:, 2].max() == w and crops[:, 3].max() == h  # flush with the far edges
    xs = sorted({float(c[0]) for c in crops})
    assert all(b - a <= tile * (1 - overlap) + 1e-6 for a, b in zip(xs, xs[1:]))


def test_a_tile_larger_than_the_frame_is_the_frame():
    np.testing.assert_array_equal(tile_grid(50, 60, 64), [[0, 0, 60, 50]])


def test_a_box_split_across_two_tiles_is_merged_into_one():
    h, w = 100, 200
    left, right = np.array([0, 0, 120, 100]), np.array([80, 0, 200, 100])  # overlap 80..120
    obj = [60.0, 30.0, 150.0, 70.0]
    a = np.array([[60, 30, 120, 70, 0.8]], np.float32)  # what the left tile saw: cut at 120
    b = np.array([[80, 30, 150, 70, 0.6]], np.float32)  # the right tile: cut at 80
    cut = np.concatenate([cut_by_edge(a, left, (h, w)), cut_by_edge(b, right, (h, w))])
    assert cut.all()
    got = merge(np.concatenate([a, b]), cut)
    np.testing.assert_allclose(got, [[*obj, 0.8]])


def test_the_same_object_seen_by_two_crops_is_kept_once_and_not_widened():
    boxes = np.array([[10, 10, 30, 30, 0.9], [11, 9, 31, 29, 0.7], [100, 100, 120, 120, 0.5]])
    got = merge(boxes, np.zeros(3, bool))
    np.testing.assert_allclose(got, boxes[[0, 2]].astype(np.float32))


def test_a_box_inside_a_larger_one_joins_it():
    boxes = np.array([[10, 10, 50, 50, 0.9], [12, 12, 30, 30, 0.95]])  # a part, higher score
    got = merge(boxes, np.array([False, True]))
    np.testing.assert_allclose(got, [[10, 10, 50, 50, 0.95]])


def test_empty_input():
    assert merge(np.zeros((0, 5))).shape == (0, 5)


@pytest.mark.parametrize(
    "kw, name", [(dict(tile=-1), "tile"), (dict(tile=64, tile_overlap=1.0), "tile_overlap")]
)
def test_bad_tile_options_name_the_option(kw, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        PredictOptions(**kw)
    with pytest.raises(ValueError, match="tile overlap"):
        tile_grid(10, 10, 4, 1.5)
