"""Memory on a long video: `Predictor.predict_video` streams frames, so its memory stays flat.

    python -m benchmarks stream [--seconds 300] [--width 1920 --height 1080] [--query 256]
        [--stride 1] [--keep VIDEO.mp4] [--glibc-default]

Generates a video of `--seconds` at 25 frames/s (a textured background panning under a moving
square, H.264 "ultrafast"; the generation is streamed too), then runs a predictor (tiny
RefDet variants, random weights: memory does not depend on what the weights learnt) over it,
sampling the process's resident memory (VmRSS) after every batch. Prints RSS after the first
batch, at 25/50/75 % and at the end, its peak, and frames/s. As `jdet.predict` does, it first
fixes glibc's mmap threshold (`jdet._malloc`); ``--glibc-default`` leaves glibc's dynamic
threshold alone, to see what that fix does.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--query", type=int, default=256, help="query size of the model")
    parser.add_argument("--stride", type=int, default=1, help="run every n-th frame")
    parser.add_argument("--keep", type=pathlib.Path, default=None, help="reuse/keep the video")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="do not fix glibc's mmap threshold (jdet._malloc), as jdet.predict does",
    )


def rss_mb() -> float:
    """This process's resident memory (VmRSS) in MiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _frames(n: int, height: int, width: int):
    rng = np.random.default_rng(0)
    texture = rng.integers(60, 200, (height // 8 + 2, width // 8 + 2, 3), np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), np.uint8))
    for t in range(n):
        dx = t % 8
        frame = np.ascontiguousarray(texture[:height, dx : dx + width])
        x = int((width - 60) * (0.5 + 0.45 * np.sin(t / 50)))
        y = int((height - 60) * (0.5 + 0.45 * np.cos(t / 70)))
        frame[y : y + 40, x : x + 60] = (220, 40, 40)
        yield frame


def bench_stream(args: argparse.Namespace) -> None:
    from jdet import _malloc

    fixed = not args.glibc_default and _malloc.fix_mmap_threshold()
    import jax

    from jdet.data.video import video_info, write_video
    from jdet.inference.pipeline import PredictOptions
    from jdet.inference.predictor import Predictor
    from jdet.models.refdet import RefDet

    n = int(round(args.seconds * 25))
    with tempfile.TemporaryDirectory() as tmp:
        video = args.keep or pathlib.Path(tmp) / "long.mp4"
        if not video.exists():
            start = time.perf_counter()
            write_video(video, _frames(n, args.height, args.width), 25, preset="ultrafast")
            print(f"generated {video}: {n} frames in {time.perf_counter() - start:.0f} s")
        info = video_info(video)
        model = RefDet(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=0)
        example = {
            "query": np.zeros((1, args.query, args.query, 3), np.float32),
            "support": np.zeros((1, 1, 3, 64, 64, 3), np.float32),
        }
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), example)
        predictor = Predictor(
            model, variables, query_size=args.query, support_size=64, options=PredictOptions()
        )
        photos = [np.full((80, 80, 3), 200, np.uint8)] * 3
        samples: list[tuple[int, float]] = []
        done = 0

        def on_frames(k: int) -> None:
            nonlocal done
            done += k
            samples.append((done, rss_mb()))

        before = rss_mb()
        start = time.perf_counter()
        out = predictor.predict_video(video, photos, stride=args.stride, on_frames=on_frames)
        seconds = time.perf_counter() - start
    total = len(out)
    print(
        f"predict_video on {info.width}×{info.height}, {info.num_frames} frames "
        f"({info.num_frames / 25:.0f} s at 25 fps), stride {args.stride}, query {args.query}², "
        f"tiny RefDet; jax {jax.__version__} ({jax.devices()[0].platform}); glibc mmap "
        f"threshold {'fixed at 1 MiB' if fixed else 'dynamic (default)'}"
    )
    print(f"RSS before: {before:.0f} MiB; {total} frames run, {total / seconds:.1f} frames/s\n")
    print("| frames done | RSS (MiB) |\n|---:|---:|")
    marks = [samples[0]] + [
        samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.25, 0.5, 0.75)
    ]
    for frames, rss in [*marks, samples[-1]]:
        print(f"| {frames} | {rss:.0f} |")
    print(f"\npeak {max(r for _, r in samples):.0f} MiB")
