"""H.264 encoding with PyAV (libx264, yuv420p): `write_video`, also exported by video.py."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

PathLike = str | os.PathLike


def write_video(path: PathLike, frames: Iterable[np.ndarray], fps: float | Fraction = 25, *,
                crf: int = 23, preset: str = "medium", gop: int | None = None,
                threads: int | None = None, deterministic: bool = False) -> int:
    """Encode RGB frames [H, W, 3] uint8 to an H.264 (libx264, yuv420p) mp4; returns the count.

    Frames are consumed one at a time (constant memory). H and W must be even (yuv420p halves
    the chroma planes). `gop` is the keyframe interval (x264's default 250 when None); smaller
    values make random access cheaper. On error the partial file is removed.

    deterministic: same frames → same bytes. By default x264 is *not* reproducible here:
    measured with this PyAV build, its SIMD routines read row padding and other uninitialised
    memory, so the output depended on the heap state (e.g. on what Python allocated between
    frames), and frame threads added timing-dependent differences. deterministic=True uses one
    thread and no SIMD (x264 ``asm=0``): about 3x slower to encode, identical bytes every run.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(os.fspath(path), "w")
    count = 0
    try:
        stream = None
        for rgb in frames:
            rgb = np.asarray(rgb)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"{path}: frame {count} must be [H, W, 3] uint8, got "
                                 f"{rgb.shape} {rgb.dtype}")
            if stream is None:
                height, width = rgb.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"{path}: libx264 yuv420p needs even frame sizes, got "
                                     f"{width}x{height}; crop or pad by one pixel")
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                options = {"crf": str(crf), "preset": preset}
                if gop is not None:
                    options["g"] = str(gop)
                if deterministic:
                    threads = 1
                    options["x264-params"] = "asm=0"
                if threads is not None:
                    options["threads"] = str(threads)
                stream.options = options
            elif rgb.shape[:2] != (height, width):
                raise ValueError(f"{path}: frame {count} is {rgb.shape[1]}x{rgb.shape[0]}, the "
                                 f"first frame was {width}x{height}; all frames must match")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode())  # flush the encoder's delayed frames
    except BaseException:
        container.close()
        path.unlink(missing_ok=True)
        raise
    container.close()
    return count
