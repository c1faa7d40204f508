"""Coloured squares on grey noise: a tiny challenge-layout dataset whose object is findable by
its colour (tests/test_data_pipeline.py, tests/test_copy_paste.py)."""

from __future__ import annotations

import json
import pathlib

import av
import numpy as np
from PIL import Image

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 30), (200, 40, 200)]


def make_square_dataset(
    root: pathlib.Path,
    num_videos: int = 5,
    num_frames: int = 12,
    height: int = 96,
    width: int = 128,
) -> pathlib.Path:
    """Challenge layout: video v shows a square of COLOURS[v] on frames 3..9 (moving), grey
    noise elsewhere; 3 reference photos of the square on white."""
    rng = np.random.default_rng(0)
    entries = []
    for v in range(num_videos):
        folder = root / "samples" / f"Object_{v}"
        (folder / "object_images").mkdir(parents=True)
        background = np.clip(rng.normal(100, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        container = av.open(str(folder / "drone_video.mp4"), "w")
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        boxes = []
        for f in range(num_frames):
            frame = background.copy()
            if 3 <= f < num_frames - 2:
                x1, y1 = 8 + 6 * f, 10 + 4 * f
                frame[y1 : y1 + 20, x1 : x1 + 24] = COLOURS[v % len(COLOURS)]
                boxes.append({"frame": f, "x1": x1, "y1": y1, "x2": x1 + 24, "y2": y1 + 20})
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        container.close()
        for k in range(3):
            photo = np.full((64 + 8 * k, 64, 3), 255, np.uint8)
            photo[10:50, 12:52] = COLOURS[v % len(COLOURS)]
            Image.fromarray(photo).save(folder / "object_images" / f"img_{k + 1}.jpg")
        entries.append({"video_id": f"Object_{v}", "annotations": [{"bboxes": boxes}]})
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "annotations.json").write_text(json.dumps(entries))
    return root
