"""annotations.json of the Zalo AI Challenge 2025: parse, check types, check boxes.

Format (docs/original.md §1): a list with one entry per video,
``[{"video_id": str, "annotations": [{"bboxes": [{"frame": int, "x1", "y1", "x2", "y2"}]}]}]``
with absolute pixel corners. Several ``annotations`` groups (and repeated entries of one
video) are merged. Problems go to a `Report`; nothing raises on bad content.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import NamedTuple

from jdet.data.report import Report
from jdet.submission import Box  # x1, y1, x2, y2 in pixels


class RawBox(NamedTuple):
    """A box entry as read from the JSON, before range checks."""

    frame: int
    box: Box
    where: str  # location in the JSON, e.g. "annotations[0].bboxes[3]"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _as_int(value: object) -> int | None:
    """JSON integer (or integral float like 12.0) → int; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_coord(value: object) -> float | None:
    """Finite JSON number → float; None for anything else (strings, bools, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def parse_annotations(path: pathlib.Path, name: str,
                      report: Report) -> dict[str, list[RawBox]] | None:
    """Boxes per video id from annotations.json; None when the file cannot be parsed at all.

    `name` is how messages refer to the file (e.g. "annotations/annotations.json").
    Malformed entries are reported and skipped; the rest is kept.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        report.error(f"{name}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                     "fix the file (python -m json.tool shows the spot)")
        return None
    except (OSError, UnicodeDecodeError) as e:
        report.error(f"{name}: cannot read the file ({e})")
        return None
    if not isinstance(data, list):
        report.error(f"{name}: the top level must be a list of {{video_id, annotations}} "
                     f"objects, got {_type_name(data)}")
        return None
    boxes: dict[str, list[RawBox]] = {}
    for n, entry in enumerate(data):
        where = f"{name}: entry #{n}"
        if not isinstance(entry, dict):
            report.error(f"{where}: expected an object with video_id and annotations, got "
                         f"{_type_name(entry)}")
            continue
        video_id = entry.get("video_id")
        if not isinstance(video_id, str) or not video_id:
            problem = "missing" if "video_id" not in entry else \
                f"must be a non-empty string, got {_type_name(video_id)} {video_id!r}"
            report.error(f"{where}: field 'video_id' {problem}")
            continue
        where = f"{name}: video '{video_id}'"
        if video_id in boxes:
            report.warn(f"{where}: listed in more than one entry; their boxes are merged")
        found = boxes.setdefault(video_id, [])
        if "annotations" not in entry:
            hint = (" (this looks like a submission file with 'detections')"
                    if "detections" in entry else "")
            report.error(f"{where} (entry #{n}): field 'annotations' missing{hint}; use "
                         "\"annotations\": [] for a video without the object")
            continue
        groups = entry["annotations"]
        if not isinstance(groups, list):
            report.error(f"{where}: field 'annotations' must be a list, got {_type_name(groups)}")
            continue
        for g, group in enumerate(groups):
            found += _parse_group(group, f"annotations[{g}]", where, report)
    return boxes


def _parse_group(group: object, field: str, where: str, report: Report) -> list[RawBox]:
    """Boxes of one {"bboxes": [...]} group; reports and skips malformed ones."""
    if not isinstance(group, dict):
        report.error(f"{where}: '{field}' must be an object with a 'bboxes' list, got "
                     f"{_type_name(group)}")
        return []
    if "bboxes" not in group:
        report.error(f"{where}: field '{field}.bboxes' missing")
        return []
    if not isinstance(group["bboxes"], list):
        report.error(f"{where}: field '{field}.bboxes' must be a list, got "
                     f"{_type_name(group['bboxes'])}")
        return []
    out = []
    for b, item in enumerate(group["bboxes"]):
        here = f"{field}.bboxes[{b}]"
        if not isinstance(item, dict):
            report.error(f"{where}: '{here}' must be an object, got {_type_name(item)}")
            continue
        missing = [k for k in ("frame", "x1", "y1", "x2", "y2") if k not in item]
        if missing:
            report.error(f"{where}: '{here}' is missing field(s) {', '.join(missing)}")
            continue
        frame = _as_int(item["frame"])
        if frame is None:
            report.error(f"{where}: '{here}.frame' must be an integer, got "
                         f"{_type_name(item['frame'])} {item['frame']!r}")
            continue
        coords = [_as_coord(item[k]) for k in ("x1", "y1", "x2", "y2")]
        bad = [k for k, c in zip(("x1", "y1", "x2", "y2"), coords) if c is None]
        if bad:
            report.error(f"{where}: '{here}' (frame {frame}) field {bad[0]} must be a finite "
                         f"number, got {_type_name(item[bad[0]])} {item[bad[0]]!r}")
            continue
        out.append(RawBox(frame, tuple(coords), here))
    return out


def check_boxes(video_id: str, raw: list[RawBox], num_frames: int, height: int, width: int,
                name: str, report: Report) -> dict[int, Box]:
    """Range-check the boxes of one video → {frame: (x1, y1, x2, y2)} sorted by frame.

    Errors (box dropped): frame outside 0..num_frames-1, x2 <= x1 or y2 <= y1, box entirely
    outside the frame. Warnings: box partly outside (clipped to the frame), several boxes for
    one frame (the last one in file order is kept).
    """
    where = f"{name}: video '{video_id}'"
    boxes: dict[int, Box] = {}
    for frame, (x1, y1, x2, y2), field in raw:
        at = f"{where} frame {frame} ({field})"
        if not 0 <= frame < num_frames:
            report.error(f"{at}: frame number outside the video, which has {num_frames} "
                         f"frames (0..{num_frames - 1})")
            continue
        if x2 <= x1 or y2 <= y1:
            report.error(f"{at}: empty or inverted box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g}; "
                         "needs x2 > x1 and y2 > y1 (corners, not width/height?)")
            continue
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                   min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            report.error(f"{at}: box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} lies entirely "
                         f"outside the {width}x{height} frame")
            continue
        if clipped != (x1, y1, x2, y2):
            report.warn(f"{at}: box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} extends outside the "
                        f"{width}x{height} frame; clipped to "
                        f"{' '.join(f'{v:g}' for v in clipped)}")
        if frame in boxes:
            report.warn(f"{at}: frame already has a box; this later one is kept (one box per "
                        "frame)")
        boxes[frame] = clipped
    return dict(sorted(boxes.items()))
