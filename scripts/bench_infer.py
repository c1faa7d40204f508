"""Inference throughput: `python3 scripts/bench.py infer [--frames 48] [--sizes 320,640]`.

A 640×360 synthetic video (generated into a temp folder) through `jdet.predict.Predictor` —
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
import time

import jax
import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=48, help="frames in the test video")
    parser.add_argument("--sizes", default="320,640", help="query sizes to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny model variants (smoke test)")


def measure_infer(args: argparse.Namespace) -> dict:
    """The inference table's numbers: {"frames", "decode_fps", "support", "rows": [{size,
    compile_s, fps_cached, fps_recomputed, encode_s}]}."""
    from jdet.data import synthetic, zalo
    from jdet.data.video import iter_frames
    from jdet.models.refdet import RefDet
    from jdet.predict import PredictOptions, Predictor

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
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_frames(video))
        result = {"frames": n, "decode_fps": n / (time.perf_counter() - t0), "rows": []}

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
            t0 = time.perf_counter()
            protos = jax.block_until_ready(predictor.encode_references(photos))
            frames = [f for _, f in zip(range(args.batch), (f for _, f in iter_frames(video)))]
            predictor.detect_frames(frames, protos)
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(predictor.encode_references(photos))
            encode_s = (time.perf_counter() - t0) / 3
            t0 = time.perf_counter()
            predictor.predict_video(video, photos)
            cached = n / (time.perf_counter() - t0)
            batches = -(-n // args.batch)
            recomputed = n / (n / cached + batches * encode_s)
            result["rows"].append(
                {
                    "size": size,
                    "compile_s": compile_s,
                    "fps_cached": cached,
                    "fps_recomputed": recomputed,
                    "encode_s": encode_s,
                }
            )
    return result


def bench_infer(args: argparse.Namespace) -> None:
    result = measure_infer(args)
    print(
        f"jdet.predict on a 640×360 video, {result['frames']} frames, batch {args.batch}, "
        f"{'tiny variants' if args.tiny else 'YOLOv8n + DINOv3 ViT-S/16'} (random weights), "
        f"3 references at {result['support']}²; jax {jax.__version__} ({jax.devices()[0].platform}); "
        f"decode alone {result['decode_fps']:.0f} frames/s"
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    bench_infer(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
