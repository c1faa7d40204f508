"""Tiled inference for small objects: overlapping crops of a frame, boxes merged back.

A frame letterboxed whole to the query size shrinks a 30-px object to ~12 px at 256² from a
640-px frame. Tiles of `tile` frame pixels (overlapping by at least `overlap` of a tile) are
each letterboxed to the query size instead, so the object keeps `query_size / tile` of its
size; the full frame can be run too, for objects larger than a tile. The pieces:

- `tile_grid(h, w, tile, overlap)`: the crops, covering the frame, the last ones flush with
  its right and bottom edges;
- `merge(boxes, iou, ios)`: the detections of all crops, in frame pixels, reduced to one box
  per object. Greedy in score order: a box joins a kept one when their IoU ≥ `iou` (the same
  object seen by two crops), or when one lies mostly inside the other (intersection over the
  smaller ≥ `ios`: a crop that saw part of the object); when either of the two was cut by its
  crop's edge (a part), the kept box widens to their union. The kept score is the higher.
  The idea of sliced inference with merging is SAHI's (Akyon et al., 2022).
"""

from __future__ import annotations

import numpy as np


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if tile >= length:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def tile_grid(height: int, width: int, tile: int, overlap: float = 0.25) -> np.ndarray:
    """Crops [n, 4] (x1, y1, x2, y2, frame pixels) of at most tile × tile covering the frame;
    neighbours overlap by at least `overlap` of a tile."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    xs, ys = _starts(width, tile, overlap), _starts(height, tile, overlap)
    return np.array(
        [[x, y, min(x + tile, width), min(y + tile, height)] for y in ys for x in xs], np.float32
    )


def cut_by_edge(boxes: np.ndarray, crop: np.ndarray, frame_hw: tuple[int, int], px: float = 2.0):
    """[n] bool: the box touches an edge of its crop that is not an edge of the frame."""
    h, w = frame_hw
    x1, y1, x2, y2 = crop
    cut = np.zeros(len(boxes), bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= x1 + px
    if y1 > 0:
        cut |= boxes[:, 1] <= y1 + px
    if x2 < w:
        cut |= boxes[:, 2] >= x2 - px
    if y2 < h:
        cut |= boxes[:, 3] >= y2 - px
    return cut


def _inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return ix * iy


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def merge(
    boxes: np.ndarray, cut: np.ndarray | None = None, iou: float = 0.5, ios: float = 0.6
) -> np.ndarray:
    """Detections [n, 5] (x1, y1, x2, y2, score) from several crops → [m, 5], one per object.

    cut [n] bool: the box was cut by its crop's edge (`cut_by_edge`); such boxes are parts,
    and a part widens the box it joins to their union."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    cut = np.zeros(len(boxes), bool) if cut is None else np.asarray(cut, bool)
    order = np.argsort(-boxes[:, 4], kind="stable")
    kept: list[np.ndarray] = []
    kept_cut: list[bool] = []
    for i in order:
        b = boxes[i]
        if kept:
            k = np.stack(kept)
            inter = _inter(b, k)
            union = _area(b) + _area(k) - inter
            iou_k = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
            smaller = np.minimum(_area(b), _area(k))
            ios_k = np.where(smaller > 0, inter / np.maximum(smaller, 1e-9), 0.0)
            hit = np.flatnonzero((iou_k >= iou) | (ios_k >= ios))
            if len(hit):
                j = hit[np.argmax(iou_k[hit])]
                if cut[i] or kept_cut[j]:  # a part: the object spans both boxes
                    kb = kept[j]
                    corners = [*np.minimum(kb[:2], b[:2]), *np.maximum(kb[2:4], b[2:4])]
                    kept[j] = np.array([*corners, kb[4]], np.float32)
                    kept_cut[j] = bool(cut[i] and kept_cut[j])
                continue
        kept.append(b.copy())
        kept_cut.append(bool(cut[i]))
    return np.stack(kept) if kept else np.zeros((0, 5), np.float32)
