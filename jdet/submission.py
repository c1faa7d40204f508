"""The challenge's format (docs/original.md §1): submissions and annotations, read, validated,
written, and made from a model's per-frame detections.

    [{"video_id": "Backpack_0",
      "detections": [{"bboxes": [{"frame": 370, "x1": 420, "y1": 311, "x2": 468, "y2": 356}]}]},
     {"video_id": "Person_3", "detections": []}]

The types, one per concept (coordinates are absolute pixels of the video frame):

- `Box`: (x1, y1, x2, y2);
- `Tracks = dict[video_id, dict[frame, Box]]`: a submission or the ground truth, at most one
  box per frame (the challenge scores one box per frame), every video present (an empty dict
  when nothing was found);
- `FrameDetections = dict[frame, ndarray [n, 5]]`: a model's scored boxes on one video's frames
  (x1, y1, x2, y2, score; n may be 0); `Detections = dict[video_id, FrameDetections]`.

`submission_from_detections` keeps one box per frame; `load_ground_truth` reads the ground
truth of a file or of a challenge-layout folder.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]
Tracks = dict[str, dict[int, Box]]
FrameDetections = dict[int, np.ndarray]
Detections = dict[str, FrameDetections]

ANNOTATIONS_FILE = pathlib.Path("annotations") / "annotations.json"
SAMPLES_DIR = "samples"


class SubmissionError(ValueError):
    """A submission file that does not follow the challenge's format; names the file and field."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


def to_json(
    tracks: Mapping[str, Mapping[int, Box]], video_ids: Iterable[str] | None = None
) -> list:
    """Tracks → the challenge's JSON structure (one `detections` group per non-empty video).

    video_ids: every video that must appear (default: the keys of `tracks`, in order); a video
    without boxes gets `"detections": []`. Frames are sorted; coordinates are rounded to ints,
    as in the challenge's published examples.
    """
    ids = list(tracks) if video_ids is None else list(video_ids)
    missing = [v for v in tracks if v not in set(ids)]
    if missing:
        raise ValueError(f"tracks for videos not in video_ids: {missing[:5]}")
    out = []
    for vid in ids:
        frames = tracks.get(vid, {})
        bboxes = []
        for frame in sorted(frames):
            x1, y1, x2, y2 = (float(v) for v in frames[frame])
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise ValueError(f"video {vid!r} frame {frame}: non-finite box {frames[frame]}")
            bboxes.append(
                {
                    "frame": int(frame),
                    "x1": round(x1),
                    "y1": round(y1),
                    "x2": round(x2),
                    "y2": round(y2),
                }
            )
        out.append({"video_id": vid, "detections": [{"bboxes": bboxes}] if bboxes else []})
    return out


def write_submission(
    path: str | os.PathLike,
    tracks: Mapping[str, Mapping[int, Box]],
    video_ids: Iterable[str] | None = None,
) -> pathlib.Path:
    """Write `tracks` as the challenge's JSON (atomically: a temp file renamed into place)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(tracks, video_ids)) + "\n")
    os.replace(tmp, path)
    return path


def _box(path, where: str, entry: Any) -> tuple[int, Box]:
    if not isinstance(entry, dict):
        raise SubmissionError(path, f"{where}: expected an object with frame, x1, y1, x2, y2")
    missing = [k for k in ("frame", "x1", "y1", "x2", "y2") if k not in entry]
    if missing:
        raise SubmissionError(path, f"{where}: missing field(s) {', '.join(missing)}")
    try:
        frame = int(entry["frame"])
        box = tuple(float(entry[k]) for k in ("x1", "y1", "x2", "y2"))
    except (TypeError, ValueError):
        raise SubmissionError(path, f"{where}: frame and coordinates must be numbers") from None
    if frame < 0 or frame != entry["frame"]:
        raise SubmissionError(path, f"{where}: frame must be a non-negative integer")
    if not all(math.isfinite(v) for v in box):
        raise SubmissionError(path, f"{where}: non-finite coordinate")
    if box[2] < box[0] or box[3] < box[1]:
        raise SubmissionError(path, f"{where}: x2 < x1 or y2 < y1 ({box})")
    return frame, box  # type: ignore[return-value]


def parse_submission(data: Any, path: str | os.PathLike = "<submission>") -> Tracks:
    """The challenge's JSON structure → Tracks; SubmissionError naming the field on bad input.

    Accepts `annotations` in place of `detections` too, so ground truth reads the same way.
    A frame given twice for one video keeps its last box.
    """
    if not isinstance(data, list):
        raise SubmissionError(path, "expected a JSON list with one object per video")
    tracks: Tracks = {}
    for i, video in enumerate(data):
        where = f"entry {i}"
        if not isinstance(video, dict) or "video_id" not in video:
            raise SubmissionError(path, f"{where}: expected an object with a video_id")
        vid = str(video["video_id"])
        if vid in tracks:
            raise SubmissionError(path, f"{where}: video_id {vid!r} appears twice")
        groups = video.get("detections", video.get("annotations"))
        if groups is None:
            raise SubmissionError(path, f"{where} ({vid}): missing 'detections'")
        if not isinstance(groups, list):
            raise SubmissionError(path, f"{where} ({vid}): 'detections' must be a list")
        frames: dict[int, Box] = {}
        for j, group in enumerate(groups):
            boxes = group.get("bboxes") if isinstance(group, dict) else None
            if not isinstance(boxes, list):
                raise SubmissionError(path, f"{where} ({vid}) group {j}: missing 'bboxes' list")
            for k, entry in enumerate(boxes):
                frame, box = _box(path, f"{where} ({vid}) group {j} box {k}", entry)
                frames[frame] = box
        tracks[vid] = frames
    return tracks


def read_submission(path: str | os.PathLike) -> Tracks:
    """Read a submission (or annotations) JSON file; SubmissionError naming what is wrong."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SubmissionError(path, "no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SubmissionError(path, f"not valid JSON ({err})") from None
    return parse_submission(data, path)


def load_ground_truth(
    annotations: str | os.PathLike | None = None, samples: str | os.PathLike | None = None
) -> Tracks:
    """Ground-truth Tracks from an annotations.json or from a challenge-layout split folder.

    annotations: the file itself. samples: a split ROOT; reads ROOT/annotations/annotations.json
    and adds every ROOT/samples/<video_id>/ folder without an entry as a video with no boxes
    (a negative video). Errors are SubmissionError naming the file and field. Boxes are taken
    as written (not clipped).
    """
    if (annotations is None) == (samples is None):
        raise ValueError("give exactly one of annotations and samples")
    if annotations is not None:
        return read_submission(annotations)
    root = pathlib.Path(samples)
    gt = read_submission(root / ANNOTATIONS_FILE)
    folders = root / SAMPLES_DIR
    if folders.is_dir():
        for folder in sorted(folders.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                gt.setdefault(folder.name, {})
    return gt


# ---------------------------------------------------------------------------- detections


def names(ids: Sequence[str], limit: int = 5) -> str:
    """'a', 'b', 'c' and 2 more: video ids for messages."""
    shown = ", ".join(repr(v) for v in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_detections(video_id: str, frame: int, dets: Any) -> np.ndarray:
    """Validate one frame's detections → [n, 5] f64 array; ValueError naming video and frame."""
    arr = np.asarray(dets, np.float64)
    if arr.size == 0:
        return arr.reshape(0, 5)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(
            f"video {video_id!r} frame {frame}: detections must be [n, 5] "
            f"(x1, y1, x2, y2, score), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"video {video_id!r} frame {frame}: non-finite detection values")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"video {video_id!r} frame {frame}: detection with x2 < x1 or y2 < y1")
    return arr


def submission_from_detections(
    detections: Mapping[str, Mapping[int, Any]], conf_threshold: float = 0.25
) -> Tracks:
    """Per frame the highest-score box with score ≥ conf_threshold (one box per frame).

    detections: `Detections`. Frames with no box above the threshold are left out; every video
    stays (an empty dict when nothing passes). Ties keep the first row.
    """
    tracks: Tracks = {}
    for video_id, per_frame in detections.items():
        boxes: dict[int, Box] = {}
        for frame in sorted(per_frame):
            dets = check_detections(video_id, frame, per_frame[frame])
            keep = dets[dets[:, 4] >= conf_threshold]
            if len(keep):
                best = keep[int(np.argmax(keep[:, 4]))]
                boxes[int(frame)] = (float(best[0]), float(best[1]), float(best[2]), float(best[3]))
        tracks[video_id] = boxes
    return tracks


def save_detections(path: str | os.PathLike, detections: Mapping[str, Mapping[int, Any]]) -> None:
    """`Detections` → one .npz (a [n, 5] array per video and frame, keyed "video_id/frame")."""
    arrays = {
        f"{v}/{f}": np.asarray(d) for v, frames in detections.items() for f, d in frames.items()
    }
    np.savez_compressed(path, **arrays)


def load_detections(path: str | os.PathLike) -> Detections:
    """What `save_detections` wrote."""
    out: Detections = {}
    with np.load(path) as data:
        for key in data.files:
            video_id, frame = key.rsplit("/", 1)
            out.setdefault(video_id, {})[int(frame)] = data[key]
    return {v: dict(sorted(frames.items())) for v, frames in out.items()}
