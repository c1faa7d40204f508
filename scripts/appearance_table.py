"""Appearance re-scoring on a run's held-out videos: the table of docs/inference.md §7.

    python3 scripts/appearance_table.py --workdir runs/photo0 [--samples ROOT] [--betas 2,3]

Takes the run's scored boxes with the detector's own scores (WORKDIR/ablation/, written by
`scripts/ablate_temporal.py --appearance 0`, or made here the same way), measures each box's
colour similarity to its video's references once (`jdet.inference.appearance`), and prints
the mean ST-IoU of the per-frame rule at its best threshold (in brackets) on these videos for:
the detector's scores; colour with one level for every video (the mean similarity of all
frames' best boxes; each β); and appearance re-scoring with the video's running level (each β).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np

from jdet.config import predict_options
from jdet.data import video as video_io
from jdet.data import zalo
from jdet.evaluation.run import cached_detections, run_videos
from jdet.evaluation.st_iou import st_iou
from jdet.inference.appearance import AppearanceScorer, frame_similarity, reference_histogram
from jdet.inference.temporal import TemporalOptions, decide_all

THRESHOLDS = [0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2]


def _best(gt, detections) -> tuple[float, float]:
    scores = [
        (st_iou(gt, decide_all(detections, TemporalOptions(mode="frame", threshold=t)))[0], t)
        for t in THRESHOLDS
    ]
    return max(scores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--samples", type=pathlib.Path, default=None)
    parser.add_argument("--betas", default="2,3")
    args = parser.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    config, samples, records = run_videos(args.workdir, args.samples)
    gt = {r.video_id: dict(r.boxes) for r in records}
    options = dataclasses.replace(predict_options(config), appearance=0.0)
    cache = args.workdir / "ablation" / f"detections_{samples.name}.npz"
    detections, _ = cached_detections(args.workdir, records, cache, options)
    photos, sims = {}, {}
    for r in records:
        photos[r.video_id] = [zalo.load_reference(p) for p in r.reference_paths]
        ref = reference_histogram(photos[r.video_id])
        dets = detections[r.video_id]
        sims[r.video_id] = {
            f: frame_similarity(frame, dets[f], ref)
            for f, frame in video_io.iter_frames(r.video_path)
            if f in dets and len(dets[f])
        }
    tops = [
        sims[v][f][np.argmax(d[:, 4])]
        for v, fr in detections.items()
        for f, d in fr.items()
        if f in sims[v]
    ]
    mean_level = float(np.mean(tops))

    def rescored(beta: float, level: float | None):
        out = {}
        for v, frames in detections.items():
            scorer = AppearanceScorer(photos[v], beta, level=level)
            out[v] = {
                f: scorer.apply(sims[v][f], d) if f in sims[v] else d
                for f, d in sorted(frames.items())
            }
        return out

    cell = lambda r: "{:.4f} ({:g})".format(*r)  # noqa: E731
    head = ["detector's scores"] + [f"one level {mean_level:.3f}, β {b:g}" for b in betas]
    head += [f"appearance β {b:g}" for b in betas]
    row = [cell(_best(gt, detections))]
    row += [cell(_best(gt, rescored(b, mean_level))) for b in betas]
    row += [cell(_best(gt, rescored(b, None))) for b in betas]
    print(f"{args.workdir} on {samples} ({len(records)} videos), per-frame rule, best threshold:")
    print("| " + " | ".join(head) + " |\n|" + "---:|" * len(head) + "\n| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
