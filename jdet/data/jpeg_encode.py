"""JPEG encoding for the TFDS build (`jdet.data.tfds_builder`): frames encoded on a thread
pool in order, reference photos kept as their own bytes when they are plain RGB JPEGs."""

from __future__ import annotations

import collections
import concurrent.futures
import io
import pathlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from jdet.data import zalo


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def reference_bytes(path: pathlib.Path, quality: int) -> bytes:
    """The photo's own bytes when it is a JPEG Pillow reads as RGB without EXIF rotation,
    else `zalo.load_reference` (converts modes, applies EXIF orientation) re-encoded."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            plain = (
                image.format == "JPEG"
                and image.mode == "RGB"
                and image.getexif().get(0x0112, 1) == 1
            )  # 0x0112: EXIF Orientation
    except Exception:  # noqa: BLE001 - load_reference names the file and the problem
        plain = False
    return data if plain else encode_jpeg(zalo.load_reference(path), quality)


def encoded_frames(
    frames: Iterator[tuple[int, np.ndarray]], quality: int, threads: int
) -> Iterator[tuple[int, int, int, bytes]]:
    """(frame_index, height, width, JPEG bytes) in order; encodes on `threads` threads
    (Pillow releases the GIL), keeping at most 2·threads frames in flight."""
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        pending: collections.deque = collections.deque()
        for index, rgb in frames:
            pending.append((index, rgb.shape, pool.submit(encode_jpeg, rgb, quality)))
            if len(pending) >= 2 * max(1, threads):
                index0, shape, job = pending.popleft()
                yield index0, shape[0], shape[1], job.result()
        while pending:
            index0, shape, job = pending.popleft()
            yield index0, shape[0], shape[1], job.result()
