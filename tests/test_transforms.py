"""Augmentations keep boxes on the pixels they describe (jdet.data.transforms).

Each test paints a filled box of a distinct colour on low-saturation noise, transforms image
and boxes together, and checks that the pixels of that colour lie exactly under the
transformed box (within 1.5 px: bilinear resampling blurs the edges).
"""

from __future__ import annotations

import numpy as np
import pytest

from jdet.data import transforms as T

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 30)]

RED = np.array([250, 10, 10], np.uint8)


def painted(height: int, width: int, box: tuple[int, int, int, int], colour=RED) -> tuple:
    """Low-saturation noise with a filled box of `colour`; returns (image, [1, 5] boxes)."""
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(60, 80, (height, width, 1), dtype=np.uint8).repeat(3, axis=2)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image, np.array([[x1, y1, x2, y2, 7]], np.float32)


GREYS = [np.array([g, g, g], np.uint8) for g in (70, T.PAD_VALUE)]  # background, padding


def colour_extent(image: np.ndarray, colour=RED, others=()) -> np.ndarray | None:
    """xyxy extent of the pixels whose nearest reference colour is `colour` (among it, the
    greys and `others`): a pixel at least half covered by the square counts."""
    palette = np.stack([colour, *GREYS, *others]).astype(np.int32)  # [C, 3]
    distance = np.abs(image.astype(np.int32)[:, :, None, :] - palette).sum(axis=3)
    ys, xs = np.nonzero(distance.argmin(axis=2) == 0)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def assert_tight(image: np.ndarray, boxes: np.ndarray, colour=RED, tol: float = 1.5) -> None:
    extent = colour_extent(image, colour)
    assert extent is not None and len(boxes) == 1
    np.testing.assert_allclose(boxes[0, :4], extent, atol=tol)
    assert boxes[0, 4] == 7  # the label column rides along


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (64, 64)])
def test_letterbox_and_resize_keep_boxes_on_pixels(shape):
    image, boxes = painted(*shape, (20, 30, 50, 55))
    out, out_boxes = T.letterbox(image, boxes, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert_tight(out, out_boxes)
    _, _, top, left = T.letterbox_params(*shape, 128)
    assert (out[:top] == T.PAD_VALUE).all() and (out[:, :left] == T.PAD_VALUE).all()
    assert_tight(*T.resize(image, boxes, 80, 50))


@pytest.mark.parametrize("seed", range(6))
def test_random_affine_and_flip_keep_boxes_on_pixels(seed):
    rng = np.random.default_rng(seed)
    image, boxes = painted(128, 128, (40, 44, 80, 76))
    out, out_boxes = T.random_affine(
        image, boxes, rng, out_size=128, scale=(0.6, 1.4), translate=0.2
    )
    assert out.shape == (128, 128, 3)
    assert_tight(out, out_boxes)
    flipped, flipped_boxes = T.hflip(out, out_boxes, rng, p=1.0)
    assert_tight(flipped, flipped_boxes)
    same, same_boxes = T.hflip(out, out_boxes, rng, p=0.0)
    assert same is out and same_boxes is out_boxes


def test_affine_crop_clips_and_drops_boxes():
    # the identity affine keeps a box that touches the image edge
    image, boxes = painted(100, 100, (0, 40, 30, 60))
    rng = np.random.default_rng(0)
    out, out_boxes = T.random_affine(image, boxes, rng, out_size=100, scale=(1, 1), translate=0)
    np.testing.assert_array_equal(out, image)
    assert_tight(out, out_boxes)
    candidates = np.array(
        [
            [-30, 0, 10, 20, 0],  # 25% visible: kept, clipped to x1 = 0
            [-38, 0, 2, 20, 1],  # 5% visible: dropped
            [10, 10, 11.5, 30, 2],  # 1.5 px wide: dropped
            [90, 90, 120, 95, 3],  # 33% visible: kept, clipped to x2 = y2 = 100
        ],
        np.float32,
    )
    kept = T.clip_and_filter(candidates, 100, 100)
    np.testing.assert_array_equal(kept[:, 4], [0, 3])
    np.testing.assert_array_equal(kept[0, :4], [0, 0, 10, 20])


@pytest.mark.parametrize("seed", range(4))
def test_mosaic_keeps_every_tile_box_on_its_pixels(seed):
    rng = np.random.default_rng(seed)
    colours = [np.array(c, np.uint8) for c in COLOURS[:4]]
    images, boxes = [], []
    for k, colour in enumerate(colours):
        image, bx = painted(80 + 16 * k, 120 - 8 * k, (30, 25, 60, 50), colour)
        bx[:, 4] = k
        images.append(image)
        boxes.append(bx)
    canvas, merged = T.mosaic4(images, boxes, rng, size=96)
    assert canvas.shape == (192, 192, 3)
    out, out_boxes = T.random_affine(canvas, merged, rng, out_size=96)
    for row in out_boxes:
        colour = colours[int(row[4])]
        # the visible part of that tile's square is exactly under its (clipped) box
        others = [c for c in colours if c is not colour]
        np.testing.assert_allclose(row[:4], colour_extent(out, colour, others), atol=1.5)
    for k in set(range(4)) - {int(r[4]) for r in out_boxes}:  # dropped: < 10% visible
        extent = colour_extent(out, colours[k], [c for c in colours if c is not colours[k]])
        if extent is not None:
            area = np.prod(extent[2:] - extent[:2])
            assert area < 0.1 * 30 * 25 * (96 / max(images[k].shape[:2])) ** 2 * 1.2**2 + 4


def test_hsv_and_support_transforms():
    rng = np.random.default_rng(0)
    image, boxes = painted(48, 64, (10, 10, 30, 30))
    out, out_boxes = T.hsv_jitter(image, boxes, rng)
    assert out.shape == image.shape and out.dtype == np.uint8 and out_boxes is boxes
    assert not np.array_equal(out, image)
    # zero ranges are the identity up to Pillow's RGB <-> HSV rounding
    same, _ = T.hsv_jitter(image, boxes, rng, hue=0, saturation=0, value=0)
    assert np.abs(same.astype(int) - image).max() <= 3
    for mode in ("none", "weak", "strong"):
        photo = T.support_transform(image, rng, size=32, mode=mode)
        assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
    with pytest.raises(ValueError, match="support mode"):
        T.support_transform(image, rng, mode="medium")
