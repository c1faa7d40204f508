"""Appearance re-scoring: how much each detected box looks like the references' object, in colour.

A model trained on a handful of objects ranks the target against distractors of the same kind
(another box, another chair) by shape more than by colour, and a box can score the same on
frames without the object as on frames with it. Colour is the cue that generalises to objects
never seen in training, and it needs no learning: each box's score becomes

    score · (c / c̄) ** beta

- ``c``: the Bhattacharyya coefficient (Σ √(p·q), 1 for equal histograms, 0 for disjoint ones)
  between the HSV histogram (12 hue × 6 saturation × 4 value bins) of the box's pixels and that
  of the reference photos' object. The references are ground-level photos with their own
  background, so only their foreground counts (`jdet.data.copy_paste.foreground_mask`), and
  the histogram is the mean of the photos' histograms.
- ``c̄``: the mean ``c`` of the best-scored box of each frame of the video so far, this frame
  included (at least `LEVEL_FLOOR`): the video's own level (light, haze and compression shift
  every box's colours alike). Only frames up to the current one count, so the re-scoring is
  causal: what a drone running frame by frame sees.

A box that looks more like the references than the video's usual best box gains, one that
looks less loses: a distractor drops below the object, and a frame whose best box has the
wrong colours drops below the decision threshold (docs/inference.md §3 has the measured
effect). ``beta = 0`` leaves the scores as they are. The new scores rank boxes; they are not
probabilities and can exceed 1. Frames wider than `MAX_SIDE` pixels are sampled every n-th
pixel down to at most that, so the cost does not grow with the video's resolution (3–5 ms per
frame with 100 boxes on the 2-core Xeon, at 640×360 as at 1920×1080; the model takes ~60).
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jdet.data.copy_paste import foreground_mask

BINS = (12, 6, 4)  # hue, saturation, value
MAX_SIDE = 640
# The video's level is taken as at least this: a video whose best boxes share no colour with
# the references (c̄ ≈ 0) must not multiply every other box's score without bound.
LEVEL_FLOOR = 0.1


def check_beta(beta: float, name: str = "appearance") -> float:
    """`beta` as a float; ValueError naming the option when it is negative or not finite."""
    beta = float(beta)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0: off), got {beta}")
    return beta


def _hsv_bins(rgb: np.ndarray) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"), np.int32)
    h, s, v = ((hsv[..., i] * BINS[i]) >> 8 for i in range(3))
    return (h * BINS[1] + s) * BINS[2] + v


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """The bin of every colour with 6 bits per channel (its cell's centre): [64³] int16."""
    level = (np.arange(64) << 2) + 2
    grid = np.stack(np.meshgrid(level, level, level, indexing="ij"), -1)
    return _hsv_bins(grid.reshape(-1, 1, 3).astype(np.uint8)).reshape(-1).astype(np.int16)


def add_flag(parser: argparse.ArgumentParser, default: str) -> None:
    """`--appearance BETA` (None when not given: `default` says what is used then)."""
    parser.add_argument(
        "--appearance",
        type=float,
        default=None,
        metavar="BETA",
        help="weight each box's score by (colour similarity to the references / the video's "
        f"usual level) ** BETA; 0: off (default: {default})",
    )


def bin_image(rgb: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 RGB → [h, w] index of each pixel's HSV histogram bin.

    Through a table of the 64³ colours with 6 bits per channel (4× faster than converting
    every pixel to HSV; a pixel within 2 levels of a bin's edge may land in the next bin)."""
    q = np.asarray(rgb, np.uint8) >> 2
    index = q[..., 0].astype(np.int32)
    index <<= 6
    index |= q[..., 1]
    index <<= 6
    index |= q[..., 2]
    return _table().take(index)


def histogram(bins: np.ndarray) -> np.ndarray:
    """Bin indices (any shape) → the normalised histogram [prod(BINS)] (zeros if empty)."""
    counts = np.bincount(bins.ravel(), minlength=int(np.prod(BINS))).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def reference_histogram(photos: Sequence[np.ndarray]) -> np.ndarray:
    """The mean histogram of the photos' foreground (their object, not their background)."""
    if not photos:
        raise ValueError("appearance needs at least one reference photo")
    return np.mean([histogram(bin_image(p)[foreground_mask(p)]) for p in photos], 0)


def similarity(bins: np.ndarray, boxes: np.ndarray, reference: np.ndarray, scale: float = 1.0):
    """Each box's Bhattacharyya coefficient with `reference` → [n] in [0, 1].

    bins: `bin_image` of the frame resized by `scale`; boxes: [n, ≥4] x1 y1 x2 y2 in the
    frame's pixels (a box under one binned pixel still covers that pixel)."""
    h, w = bins.shape
    root = np.sqrt(reference)
    xy = np.asarray(boxes, np.float64).reshape(-1, np.shape(boxes)[-1])[:, :4] * scale
    c1 = np.clip(xy[:, 0].astype(int), 0, w - 1)
    r1 = np.clip(xy[:, 1].astype(int), 0, h - 1)
    c2 = np.maximum(np.minimum(np.ceil(xy[:, 2]).astype(int), w), c1 + 1)
    r2 = np.maximum(np.minimum(np.ceil(xy[:, 3]).astype(int), h), r1 + 1)
    out = np.empty(len(xy), np.float64)
    for i in range(len(xy)):  # Σ √(p·q) with p = counts / n: √counts · √q / √n
        crop = bins[r1[i] : r2[i], c1[i] : c2[i]]
        out[i] = np.sqrt(np.bincount(crop.ravel(), minlength=len(root))) @ root
        out[i] /= math.sqrt(crop.size)
    return out


def frame_similarity(frame: np.ndarray, dets: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`similarity` of a whole frame's boxes: the frame sampled every n-th pixel down to at
    most `MAX_SIDE` wide first."""
    step = -(-max(frame.shape[:2]) // MAX_SIDE)
    return similarity(bin_image(frame[::step, ::step]), dets, reference, 1.0 / step)


class AppearanceScorer:
    """One video's re-scoring, frame by frame: `rescore(frame, dets)` in the video's order.

    level: a fixed c̄ instead of the video's running mean (for comparisons; None: running)."""

    def __init__(self, photos: Sequence[np.ndarray], beta: float, level: float | None = None):
        self.beta = check_beta(beta)
        self.reference = reference_histogram(photos)
        self.level = level
        self.total, self.count = 0.0, 0

    def rescore(self, frame: np.ndarray, dets: np.ndarray) -> np.ndarray:
        """One frame ([H, W, 3] uint8) and its detections [n, 5] → [n, 5] with the scores
        re-weighted, sorted by the new score (highest first)."""
        dets = np.asarray(dets)
        if len(dets) == 0 or self.beta == 0:
            return dets
        return self.apply(frame_similarity(frame, dets, self.reference), dets)

    def apply(self, c: np.ndarray, dets: np.ndarray) -> np.ndarray:
        """`rescore` from the boxes' similarities `c` [n] (`frame_similarity`), already known."""
        dets = np.asarray(dets)
        if len(dets) == 0 or self.beta == 0:
            return dets
        self.total += float(c[np.argmax(dets[:, 4])])
        self.count += 1
        level = self.total / self.count if self.level is None else self.level
        out = dets.copy()
        out[:, 4] = dets[:, 4] * (c / max(level, LEVEL_FLOOR)) ** self.beta
        return out[np.argsort(-out[:, 4], kind="stable")]
