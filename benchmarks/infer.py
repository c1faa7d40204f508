"""Inference throughput of `jdet.inference.predictor.Predictor` on a synthetic video.

    python -m benchmarks infer [--frames 48] [--sizes 320,640] [--batch 8] [--tiny]

A 640×360 synthetic video (generated into a temp folder) through the `Predictor` —
decode (PyAV, streaming) + letterbox + RefDet (YOLOv8n + DINOv3 ViT-S/16, random weights) +
DFL decode + NMS on device + mapping back to frame pixels — at each query size, batch 8.
Rows: compile seconds (first batch), frames/s over the whole video with the reference
prototypes computed once per video (what `jdet.predict` does), and frames/s when they are
recomputed for every batch (what caching saves). Decode alone is timed separately.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

from benchmarks.timing import time_call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=48, help="frames in the test video")
    parser.add_argument("--sizes", default="320,640", help="query sizes to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny model variants (smoke test)")


def _time_predictor(predictor, video, photos, n: int) -> dict:
    """{compile_s, fps_cached, fps_recomputed, encode_s} of one Predictor on an n-frame video."""
    import jax

    from jdet.data.video import iter_frames

    batch = predictor.options.batch_size

    def first_batch():
        protos = jax.block_until_ready(predictor.encode_references(photos))
        frames = [f for _, f in zip(range(batch), (f for _, f in iter_frames(video)))]
        return predictor.detect_frames(frames, protos)

    compile_s = time_call(first_batch, 0).first_s
    encode_s = time_call(lambda: predictor.encode_references(photos), 3, warmup=False).mean_s
    video_s = time_call(lambda: predictor.predict_video(video, photos), 1, warmup=False).total_s
    cached = n / video_s
    batches = -(-n // batch)
    return {
        "compile_s": compile_s,
        "fps_cached": cached,
        "fps_recomputed": n / (n / cached + batches * encode_s),
        "encode_s": encode_s,
    }


def measure_infer(args: argparse.Namespace) -> dict:
    """The inference table's numbers: {"frames", "decode_fps", "support", "rows": [{size,
    compile_s, fps_cached, fps_recomputed, encode_s}]}."""
    import jax

    from jdet.data import synthetic, zalo
    from jdet.data.video import iter_frames
    from jdet.inference.pipeline import PredictOptions
    from jdet.inference.predictor import Predictor
    from jdet.models.refdet import RefDet

    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(
            pathlib.Path(tmp) / "v",
            num_videos=1,
            seed=0,
            frames=args.frames,
            width=640,
            height=360,
            reference_size=256,
        )
        folder = next((root / "samples").iterdir())
        video = folder / "drone_video.mp4"
        photos = [zalo.load_reference(p) for p in zalo.find_references(folder / "object_images")[0]]
        decode = time_call(lambda: sum(1 for _ in iter_frames(video)), 0, sync=None)
        n = decode.last
        result = {"frames": n, "decode_fps": n / decode.first_s, "rows": []}

        if args.tiny:
            model, support = (
                RefDet(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=0),
                64,
            )
        else:
            model, support = RefDet(nc_base=0), 256
        result["support"] = support
        for size in (int(s) for s in args.sizes.split(",")):
            example = {
                "query": np.zeros((1, size, size, 3), np.float32),
                "support": np.zeros((1, 1, 3, support, support, 3), np.float32),
            }
            variables = jax.jit(model.init)(jax.random.PRNGKey(0), example)
            predictor = Predictor(
                model,
                variables,
                query_size=size,
                support_size=support,
                options=PredictOptions(batch_size=args.batch),
            )
            result["rows"].append({"size": size, **_time_predictor(predictor, video, photos, n)})
    return result


def bench_infer(args: argparse.Namespace) -> None:
    import jax

    result = measure_infer(args)
    print(
        f"jdet.predict on a 640×360 video, {result['frames']} frames, batch {args.batch}, "
        f"{'tiny variants' if args.tiny else 'YOLOv8n + DINOv3 ViT-S/16'} (random weights), "
        f"3 references at {result['support']}²; jax {jax.__version__} "
        f"({jax.devices()[0].platform}); decode alone {result['decode_fps']:.0f} frames/s"
    )
    print()
    print(
        "| query size | compile (s) | frames/s (prototypes cached) | frames/s (recomputed "
        "per batch) | reference encoding (ms) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['size']} | {r['compile_s']:.1f} | {r['fps_cached']:.2f} | "
            f"{r['fps_recomputed']:.2f} | {r['encode_s'] * 1e3:.0f} |"
        )
    print()
    print("(recomputed = measured cached time + one measured reference encoding per batch)")
