"""Small objects: recall and ST-IoU by box size, whole frames against tiled inference.

    python3 scripts/small_objects.py --workdir runs/photo0 [--samples ROOT] [--tiles 0,256]
        [--values JSON] [--appearance BETA]

For each tile size (0: the whole frame letterboxed to the query size, the default; PX: also
overlapping PX × PX crops, `jdet.inference.tiling`) runs the run's best (else latest) weights
over every frame of ROOT (default: the run's validation videos) and prints one markdown table:

- recall at IoU 0.5 of the top-scoring box of each annotated frame, by the ground-truth box
  size √(w·h) in frame pixels: < 32, 32–64, > 64;
- ST-IoU with the run's temporal decisions (`eval.temporal`, or those of --values), videos
  grouped by their median ground-truth box size, and the mean;
- frames per second of the whole prediction (decode, letterbox, model, NMS, merge, appearance
  re-scoring as the run's `eval.appearance` or --appearance says).

Detections are kept in WORKDIR/small_objects/ (reused when present).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib

import numpy as np

from jdet.config import predict_options, temporal_options
from jdet.evaluation.run import cached_detections, run_videos
from jdet.evaluation.st_iou import box_iou, st_iou
from jdet.inference.temporal import decide_all

BINS = (("< 32 px", 0.0, 32.0), ("32–64 px", 32.0, 64.0), ("> 64 px", 64.0, math.inf))


def _size(box) -> float:
    return math.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _bin(size: float) -> str:
    return next(name for name, lo, hi in BINS if lo <= size < hi)


def recall_by_size(gt, detections) -> dict[str, tuple[int, int]]:
    """{bin: (hits, annotated frames)}: the top box of the frame has IoU ≥ 0.5 with the GT."""
    counts = {name: [0, 0] for name, _, _ in BINS}
    for vid, frames in gt.items():
        for f, box in frames.items():
            c = counts[_bin(_size(box))]
            c[1] += 1
            d = detections.get(vid, {}).get(f)
            if d is not None and len(d):
                top = d[int(np.argmax(d[:, 4]))]
                c[0] += box_iou(top[:4], box) >= 0.5
    return {k: (int(h), int(n)) for k, (h, n) in counts.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--samples", type=pathlib.Path, default=None)
    parser.add_argument("--tiles", default="0,256", help="comma-separated tile sizes (0: off)")
    parser.add_argument(
        "--appearance", type=float, default=None, help="default: the run's eval.appearance"
    )
    parser.add_argument(
        "--values", default=None, help="TemporalOptions fields as JSON (default: the run's)"
    )
    args = parser.parse_args(argv)
    config, samples, records = run_videos(args.workdir, args.samples)
    gt = {r.video_id: dict(r.boxes) for r in records}
    decisions = temporal_options(config)
    if args.values:
        decisions = dataclasses.replace(decisions, **json.loads(args.values))
    video_bin = {
        vid: _bin(float(np.median([_size(b) for b in boxes.values()])))
        for vid, boxes in gt.items()
        if boxes
    }
    out = args.workdir / "small_objects"
    header = (
        "| inference | recall@0.5 "
        + " | ".join(f"{name}" for name, _, _ in BINS)
        + " | ST-IoU "
        + " | ".join(f"{name}" for name, _, _ in BINS)
        + " | ST-IoU mean | frames/s |"
    )
    rows = []
    for tile in (int(t) for t in args.tiles.split(",")):
        options = dataclasses.replace(predict_options(config), tile=tile)
        if args.appearance is not None:
            options = dataclasses.replace(options, appearance=args.appearance)
        name = f"{samples.name}_tile{tile}"
        if options.appearance:
            name += f"_appearance{options.appearance:g}"
        cache = out / f"{name}.npz"
        detections, seconds = cached_detections(args.workdir, records, cache, options)
        frames = sum(len(d) for d in detections.values())
        recall = recall_by_size(gt, detections)
        mean, per_video = st_iou(gt, decide_all(detections, decisions))
        by_bin = []
        for name, _, _ in BINS:
            vals = [per_video[v] for v, b in video_bin.items() if b == name]
            by_bin.append(f"{np.mean(vals):.3f} ({len(vals)})" if vals else "–")
        label = "whole frame" if tile == 0 else f"whole frame + {tile}² tiles"
        cells = [f"{h / n:.3f} ({n})" if n else "–" for h, n in recall.values()]
        rows.append(
            f"| {label} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(by_bin)
            + f" | {mean:.4f} | {frames / seconds:.1f} |"
        )
    print(header)
    print("|---" * (3 + 2 * len(BINS)) + "|")
    print("\n".join(rows))
    print(f"\ntemporal decisions: {json.dumps(dataclasses.asdict(decisions))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
