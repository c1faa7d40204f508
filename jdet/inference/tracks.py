"""Track linking for the temporal decisions (`jdet.inference.temporal`, option ``link``).

A frame's best box is often a distractor that wins that one frame while the object is second
on many. `TrackLinker` links each frame's best boxes into tracks by overlap and scores every
box by its track: sum of the track's scores / (its length + a prior), so that a short track
needs higher scores than a long one. Causal (frame by frame, the track so far) or offline
(`rescore_by_tracks`: the whole track).
"""

from __future__ import annotations

import numpy as np

from jdet.submission import FrameDetections


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] against boxes b [n, 4] (x1, y1, x2, y2) → [n]."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = max(float(a[2] - a[0]), 0.0) * max(float(a[3] - a[1]), 0.0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class TrackLinker:
    """Links each processed frame's `k` best boxes into tracks (frame by frame, causal).

    `update(dets)` → (the kept boxes [m, 5], best first, with their scores replaced by their
    track's score so far, sum / (length + `prior`); their track ids [m]). A box joins the
    open track whose last box it overlaps most (IoU ≥ `link_iou`; pairs taken greedily, best
    IoU first, one box per track); the others start tracks. A track without a box for more
    than `max_gap` processed frames is closed. `sums`/`counts` hold every track's score sum
    and length (offline rescoring reads the final scores from them)."""

    def __init__(self, k: int, link_iou: float, max_gap: int, prior: float = 0.0):
        self.k, self.link_iou, self.max_gap, self.prior = k, link_iou, max_gap, prior
        self.sums: list[float] = []
        self.counts: list[int] = []
        self.open: dict[int, tuple[np.ndarray, int]] = {}  # track → (last box, misses)

    def update(self, dets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = np.asarray(dets, np.float64).reshape(-1, 5)
        dets = dets[np.argsort(-dets[:, 4], kind="stable")[: self.k]]
        ids = np.full(len(dets), -1, np.int64)
        tracks = list(self.open)
        if tracks and len(dets):
            overlap = np.stack([iou(self.open[t][0], dets[:, :4]) for t in tracks])  # [T, m]
            for flat in np.argsort(-overlap, axis=None, kind="stable"):
                t, d = divmod(int(flat), len(dets))
                if overlap[t, d] < self.link_iou:
                    break
                if ids[d] < 0 and tracks[t] not in ids:
                    ids[d] = tracks[t]
        for d in np.flatnonzero(ids < 0):
            ids[d] = len(self.sums)
            self.sums.append(0.0)
            self.counts.append(0)
        for d, t in enumerate(ids):
            self.sums[t] += float(dets[d, 4])
            self.counts[t] += 1
        matched = set(ids.tolist())
        for t in tracks:
            if t not in matched:
                box, misses = self.open[t]
                if misses + 1 > self.max_gap:
                    del self.open[t]
                else:
                    self.open[t] = (box, misses + 1)
        for d, t in enumerate(ids):
            self.open[int(t)] = (dets[d, :4].copy(), 0)
        return self.rescored(dets, ids)

    def rescored(self, dets: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(`dets` with each score replaced by its track's score now, `ids`), best first."""
        out = dets.copy()
        if len(out):
            sums = np.array([self.sums[t] for t in ids])  # not the whole list: long videos
            out[:, 4] = sums / (np.array([self.counts[t] for t in ids]) + self.prior)
        order = np.argsort(-out[:, 4], kind="stable")
        return out[order], ids[order]


def rescore_by_tracks(
    dets: FrameDetections, k: int, link_iou: float, max_gap: int, prior: float
) -> FrameDetections:
    """Offline track rescoring: every frame's `k` best boxes, each scored by its whole track
    (later frames included); the parameters as `TrackLinker`'s."""
    linker = TrackLinker(k, link_iou, max_gap, prior)
    kept = {f: linker.update(dets[f]) for f in sorted(dets)}
    return {f: linker.rescored(d, ids)[0] for f, (d, ids) in kept.items()}
