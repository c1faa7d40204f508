"""Videos to look at: the input video with the reported boxes (and the ground truth) drawn.

`write_overlay(video, out, boxes, gt)` decodes the video frame by frame, draws and encodes it
again (H.264), so memory stays flat however long the video is. Reported boxes are drawn in
green, ground-truth boxes in magenta, and a corner strip tells the frames apart: green where
a box is reported, magenta where only the ground truth has one.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping

import numpy as np

from jdet.data import video as video_io
from jdet.submission import Box

PRED = (40, 220, 60)
GT = (230, 40, 200)


def draw_box(frame: np.ndarray, box: Box, colour: tuple[int, int, int], width: int = 2) -> None:
    """Draw a rectangle outline into `frame` [H, W, 3] uint8, in place (clipped to the frame)."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(min(x1, x2), 0), min(max(x1, x2), w - 1)
    y1, y2 = max(min(y1, y2), 0), min(max(y1, y2), h - 1)
    if x1 > x2 or y1 > y2:
        return  # entirely outside
    c = np.asarray(colour, np.uint8)
    frame[y1 : min(y1 + width, y2 + 1), x1 : x2 + 1] = c
    frame[max(y2 - width + 1, y1) : y2 + 1, x1 : x2 + 1] = c
    frame[y1 : y2 + 1, x1 : min(x1 + width, x2 + 1)] = c
    frame[y1 : y2 + 1, max(x2 - width + 1, x1) : x2 + 1] = c


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (H.264 yuv420p halves the chroma planes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def overlay_frames(
    video: str | pathlib.Path, boxes: Mapping[int, Box], gt: Mapping[int, Box] | None = None
) -> Iterator[np.ndarray]:
    """The video's frames, one at a time, with the boxes drawn."""
    gt = gt or {}
    for index, frame in video_io.iter_frames(video):
        frame = frame.copy()
        if index in gt:
            draw_box(frame, gt[index], GT)
        if index in boxes:
            draw_box(frame, boxes[index], PRED)
        strip = PRED if index in boxes else GT if index in gt else None
        if strip is not None:
            frame[:6, :40] = strip
        yield _even(frame)


def write_overlay(
    video: str | pathlib.Path,
    out: str | pathlib.Path,
    boxes: Mapping[int, Box],
    gt: Mapping[int, Box] | None = None,
) -> pathlib.Path:
    """Write `out` (mp4): `video` with `boxes` (and `gt`) drawn, at the video's frame rate."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fps = video_io.video_info(video).fps or 25.0
    video_io.write_video(out, overlay_frames(video, boxes, gt), fps, preset="veryfast")
    return out
