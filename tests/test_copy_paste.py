"""Copy-paste synthesis (jdet.data.copy_paste) and its use in the episode loader."""

from __future__ import annotations

import numpy as np
import pytest

from jdet.data import tfds_builder as tb
from jdet.data.copy_paste import cutout, foreground_mask, paste
from jdet.data.episodes import EpisodeConfig
from jdet.data.loader import EpisodeLoader
from tests.square_videos import COLOURS, make_square_dataset


def _photo(rng, h=90, w=120):
    """A red disk on a two-tone textured background (the object is the disk)."""
    yy, xx = np.mgrid[:h, :w]
    bg = np.where(xx[..., None] < w // 2, [60, 110, 70], [150, 140, 120]).astype(np.float32)
    photo = np.clip(bg + rng.normal(0, 6, (h, w, 3)), 0, 255)
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < 25**2
    photo[disk] = [210, 30, 40]
    return photo.astype(np.uint8), disk


def test_the_object_is_found_on_its_own_background():
    photo, disk = _photo(np.random.default_rng(0))
    mask = foreground_mask(photo)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.9, iou


def test_a_photo_that_is_all_object_is_kept_whole():
    noise = np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8)
    assert foreground_mask(noise).all()


def test_cutout_is_cropped_to_the_object_with_alpha():
    photo, disk = _photo(np.random.default_rng(2))
    rgba = cutout(photo)
    ys, xs = np.nonzero(disk)
    assert abs(rgba.shape[0] - (ys.max() - ys.min() + 1)) <= 2
    assert abs(rgba.shape[1] - (xs.max() - xs.min() + 1)) <= 2
    assert rgba[rgba.shape[0] // 2, rgba.shape[1] // 2, 3] == 255  # opaque centre
    assert rgba[0, 0, 3] < 128  # a corner of the disk's box is background


def test_paste_puts_the_object_in_its_box_and_leaves_the_rest():
    rng = np.random.default_rng(3)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (250, 20, 20), 255
    frame = np.full((64, 96, 3), 100, np.uint8)
    out, box = paste(frame, rgba, (15, 10), rng, max_angle=0.0, max_blur=0.0)
    x1, y1, x2, y2 = box.astype(int)
    assert (x2 - x1, y2 - y1) == (15, 10)
    assert 0 <= x1 and x2 <= 96 and 0 <= y1 and y2 <= 64
    assert (out[y1:y2, x1:x2, 0] > 200).all()
    outside = np.ones((64, 96), bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], frame[outside])


def test_paste_moves_the_colour_toward_the_real_box():
    rng = np.random.default_rng(4)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (250, 250, 250), 255
    frame = np.zeros((50, 50, 3), np.uint8)
    dark = np.full((10, 10, 3), 50, np.uint8)
    out, box = paste(frame, rgba, (20, 20), rng, max_angle=0, max_blur=0, colour_patch=dark)
    x1, y1, x2, y2 = box.astype(int)
    assert 120 < out[y1:y2, x1:x2].mean() < 180  # halfway from 250 to 50


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("squares_cp")
    tb.build_dataset(make_square_dataset(tmp / "raw"), tmp / "tfds", val_fraction=0.0, seed=0)
    return tmp / "tfds"


def test_loader_pastes_the_ways_object_into_frames_without_it(squares):
    """copy_paste=1: every positive slot is a background frame of its video with the video's
    square pasted from a reference photo; its box covers the pasted square."""
    cfg = EpisodeConfig(
        query_size=96,
        support_size=32,
        episodes_per_epoch=4,
        mosaic_prob=0.0,
        negative_ratio=0.0,
        copy_paste=1.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.0,
    )
    loader = EpisodeLoader(squares, "train", cfg, seed=0)
    checked = 0
    for episode in range(3):
        plan = loader.plan(0, episode)
        batch = loader((0, episode))
        for slot in range(len(plan.queries)):
            (box,) = batch["boxes"][slot][batch["box_mask"][slot]]
            image = np.round(batch["query"][slot] * 255).astype(np.uint8)
            video = loader.index.videos[plan.videos[plan.queries[slot].way]]
            colour = np.array(COLOURS[int(video.video_id.split("_")[1]) % len(COLOURS)])
            x1, y1, x2, y2 = np.round(box).astype(int)
            centre = image[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
            assert np.abs(centre - colour).max() < 60, (centre, colour)
            checked += 1
    assert checked >= 12
    # Deterministic, as every episode is.
    again = loader((0, 0))
    np.testing.assert_array_equal(again["query"], loader((0, 0))["query"])


def test_copy_paste_share_is_validated():
    with pytest.raises(ValueError, match="copy_paste"):
        EpisodeConfig(copy_paste=1.5)
