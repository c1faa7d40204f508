"""The video pipeline of inference, independent of the model's runtime (no jax import).

`BasePredictor` turns videos into scored boxes per frame: the reference photos are resized and
encoded once per video (the prototypes are cached for the whole video); frames are decoded one
at a time (constant memory on long videos), letterboxed to the query size, run in fixed-size
batches, and the boxes mapped back to frame pixels; with `tile` the frame's overlapping crops
are run too and merged (`jdet.inference.tiling`); with `appearance` > 0 each box's score is then
weighted by its colour similarity to the references (`jdet.inference.appearance`). A subclass
supplies the model: `_encode_support` and `_detect_batch`. `jdet.inference.predictor.Predictor`
runs a trained run in JAX; `jdet.inference.onnx_predictor.OnnxPredictor` runs an exported model
on onnxruntime.

`load_samples(root)` reads a challenge-layout folder; `predict_folder(predictor, records)` →
`jdet.submission.Detections`. Which box each frame reports is decided from them by
`jdet.inference.temporal`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from jdet.data import transforms as T
from jdet.data import video as video_io
from jdet.data import zalo
from jdet.inference import appearance, tiling
from jdet.submission import Detections, FrameDetections


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Detection settings (defaults as the original's, docs/original.md §6: NMS IoU 0.45). Which
    box each frame reports is decided afterwards (jdet.inference.temporal)."""

    nms_conf_threshold: float = 0.001  # kept for mAP (COCO-style evaluation wants low scores)
    iou_threshold: float = 0.45
    max_det: int = 100
    batch_size: int = 8
    # Tiled inference for small objects (jdet.inference.tiling): crops of `tile` frame pixels
    # overlapping by `tile_overlap`, each run at the query size, boxes merged back; with
    # `tile_full` the whole frame is run too. 0: off (the whole frame only).
    tile: int = 0
    tile_overlap: float = 0.25
    tile_full: bool = True
    # Appearance re-scoring (jdet.inference.appearance): each box's score times
    # (colour similarity to the references / the video's usual level) ** appearance; 0: off.
    # None: the run's eval.appearance (Predictor.from_checkpoint), else 0.
    appearance: float | None = None

    def __post_init__(self):
        if self.appearance is not None:
            appearance.check_beta(self.appearance)
        if self.tile < 0:
            raise ValueError(f"tile must be >= 0 (0: off), got {self.tile}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")


class BasePredictor:
    """The model-independent part of a predictor (see the module docstring). Subclasses set
    `query_size`, `support_size`, `options` and implement `_encode_support` and
    `_detect_batch`."""

    query_size: int
    support_size: int
    options: PredictOptions

    def _encode_support(self, support: np.ndarray) -> Any:
        """[K, S, S, 3] float32 in [0, 1] → the model's prototypes (opaque to the pipeline)."""
        raise NotImplementedError

    def _detect_batch(
        self, query: np.ndarray, prototypes: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[B, s, s, 3] float32 letterboxed frames in [0, 1] → after NMS (options' thresholds)
        boxes [B, m, 4] xyxy in letterboxed pixels, scores [B, m], valid [B, m] bool."""
        raise NotImplementedError

    def encode_references(self, photos: Sequence[np.ndarray]) -> Any:
        """K reference photos ([h, w, 3] uint8 RGB) → prototypes (cache these per video).
        Resized to support_size² as in training."""
        s = self.support_size
        support = np.stack([T.resize(p, T.as_boxes(None), s, s)[0] for p in photos])
        return self._encode_support(support.astype(np.float32) / 255.0)

    def _run(self, images: list[np.ndarray], prototypes) -> list[np.ndarray]:
        """Images ([h, w, 3] uint8, any size) → per image [n, 5] in its own pixels, in fixed
        batches of batch_size (one compilation)."""
        bsz, size = self.options.batch_size, self.query_size
        out = []
        for start in range(0, len(images), bsz):
            chunk = images[start : start + bsz]
            query = np.zeros((bsz, size, size, 3), np.float32)
            for i, image in enumerate(chunk):
                query[i] = T.letterbox(image, T.as_boxes(None), size)[0] / 255.0
            boxes, scores, valid = self._detect_batch(query, prototypes)
            for i, image in enumerate(chunk):
                keep = valid[i]
                kept = T.unletterbox(boxes[i][keep], image.shape[:2], size)
                out.append(np.concatenate([kept, scores[i][keep, None]], 1))
        return out

    def detect_frames(self, frames: Sequence[np.ndarray], prototypes: Any) -> list[np.ndarray]:
        """Up to batch_size frames ([H, W, 3] uint8) → per frame [n, 5] f32 in frame pixels
        (with `tile`, the merged detections of the frame's crops)."""
        o = self.options
        if not 0 < len(frames) <= o.batch_size:
            raise ValueError(f"detect_frames takes 1..{o.batch_size} frames, got {len(frames)}")
        if not o.tile:
            return [d.astype(np.float32) for d in self._run(list(frames), prototypes)]
        images, owners = [], []  # each crop and (frame index, crop box, is the whole frame)
        for f, frame in enumerate(frames):
            h, w = frame.shape[:2]
            if o.tile_full:
                images.append(frame)
                owners.append((f, np.array([0, 0, w, h], np.float32)))
            for crop in tiling.tile_grid(h, w, o.tile, o.tile_overlap):
                x1, y1, x2, y2 = crop.astype(int)
                images.append(frame[y1:y2, x1:x2])
                owners.append((f, crop))
        parts: list[list[np.ndarray]] = [[] for _ in frames]
        cuts: list[list[np.ndarray]] = [[] for _ in frames]
        for (f, crop), det in zip(owners, self._run(images, prototypes)):
            det = det.copy()
            det[:, [0, 2]] += crop[0]
            det[:, [1, 3]] += crop[1]
            parts[f].append(det)
            cuts[f].append(tiling.cut_by_edge(det, crop, frames[f].shape[:2]))
        merged = []
        for f in range(len(frames)):
            m = tiling.merge(np.concatenate(parts[f]), np.concatenate(cuts[f]))
            merged.append(m[: o.max_det].astype(np.float32))
        return merged

    def predict_video(
        self,
        video_path: str | pathlib.Path,
        references: Sequence[np.ndarray],
        *,
        stride: int = 1,
        max_frames: int | None = None,
        on_frames: Callable[[int], None] | None = None,
        detector_scores: FrameDetections | None = None,
    ) -> FrameDetections:
        """Every `stride`-th frame of a video (streamed) → {frame: [n, 5] detections}.

        references: the K reference photos ([h, w, 3] uint8 RGB); on_frames(n) is called after
        each batch with the number of frames done (progress bars); detector_scores: if given,
        filled with the detections before appearance re-scoring (the detector's own scores,
        what frame mAP measures).
        """
        prototypes = self.encode_references(references)
        beta = self.options.appearance or 0.0
        scorer = appearance.AppearanceScorer(references, beta) if beta > 0 else None
        stop = None if max_frames is None else max_frames * stride
        result: FrameDetections = {}
        pending: list[tuple[int, np.ndarray]] = []

        def flush():
            dets = self.detect_frames([f for _, f in pending], prototypes)
            if detector_scores is not None:
                detector_scores.update({i: d for (i, _), d in zip(pending, dets)})
            if scorer is not None:
                dets = [scorer.rescore(f, d) for (_, f), d in zip(pending, dets)]
            result.update({i: d for (i, _), d in zip(pending, dets)})
            if on_frames is not None:
                on_frames(len(pending))
            pending.clear()

        for index, frame in video_io.iter_frames(video_path, stride=stride, stop=stop):
            pending.append((index, frame))
            if len(pending) == self.options.batch_size:
                flush()
        if pending:
            flush()
        return result


def load_samples(
    root: str | pathlib.Path, *, min_references: int = zalo.MIN_REFERENCES
) -> list[zalo.VideoRecord]:
    """The videos of a challenge-layout folder (annotations optional); DatasetError naming the
    file and field when the folder is unusable — a sample with fewer than `min_references`
    reference photos img_1…img_K names the missing one."""
    records, report = zalo.load_dataset(root, check_videos=False, min_references=min_references)
    report.raise_if_errors()
    return records


def predict_folder(
    predictor: BasePredictor,
    records: Iterable[zalo.VideoRecord],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
    seconds: dict[str, float] | None = None,
    detector_scores: Detections | None = None,
) -> Detections:
    """Every video of a folder → {video_id: {frame: [n, 5]}} (a tqdm bar over frames).

    seconds: if given, filled with each video's wall time (reference photos read and encoded,
    frames decoded and run); detector_scores: if given, filled with the detections before
    appearance re-scoring (`Predictor.predict_video`)."""
    records = list(records)
    total = sum(
        len(
            range(
                0,
                r.num_frames if max_frames is None else min(r.num_frames, max_frames * stride),
                stride,
            )
        )
        for r in records
    )
    out = {}
    with tqdm(total=total, unit="frame", desc="predict", disable=not progress) as bar:
        for record in records:
            bar.set_postfix(video=record.video_id)
            start = time.perf_counter()
            photos = [zalo.load_reference(p) for p in record.reference_paths]
            out[record.video_id] = predictor.predict_video(
                record.video_path,
                photos,
                stride=stride,
                max_frames=max_frames,
                on_frames=bar.update,
                detector_scores=None
                if detector_scores is None
                else detector_scores.setdefault(record.video_id, {}),
            )
            if seconds is not None:
                seconds[record.video_id] = time.perf_counter() - start
    return out
