"""Temporal decisions, step by step: the ablation table of docs/inference.md §3.

    python3 scripts/ablate_temporal.py --workdir runs/photo0 [--samples ROOT] [--tune]

Runs the run's best (else latest) weights once over ROOT (default: the run's validation
videos, for configs/photo.py the held-out objects), every frame, and keeps the scored boxes
(WORKDIR/ablation/detections.npz; reused when present). Then scores ST-IoU for:

- the per-frame rule at 0.25 (the original) and at the best threshold on these videos;
- each temporal step added in turn to the per-frame rule at the tuned threshold, offline and
  causal, and the whole chain without each step.

The values of the steps are `TemporalOptions` given by --values (JSON), else the run's
`eval.temporal` with any step still off turned on at a middle value; --tune searches them on
these videos first (coordinate ascent over a small grid, offline) and prints the result, which
is what jdet's defaults were set from. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

from jdet.config import predict_options, temporal_options
from jdet.evaluation.coco import coco_map
from jdet.evaluation.run import cached_detections, run_videos
from jdet.evaluation.st_iou import st_iou
from jdet.inference.temporal import TemporalOptions, decide_all

# The steps in the order they are added, each with the option values that turn it on.
STEPS = ("adaptive", "keep_ratio", "assoc_iou", "max_gap", "min_length", "smooth")
OFF = {f.name: f.default for f in dataclasses.fields(TemporalOptions)}
GRID = {
    "threshold": [0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
    "zscore": [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0],
    "keep_ratio": [0.3, 0.5, 0.7, 0.85, 1.0],
    "assoc_iou": [0.0, 0.1, 0.3, 0.5],
    "max_gap": [0, 2, 4, 8, 16],
    "min_length": [1, 2, 3, 5, 8],
    "smooth": [0.0, 0.3, 0.5, 0.7],
}
MIDDLE = dict(adaptive=True, keep_ratio=0.6, assoc_iou=0.3, max_gap=6, min_length=3, smooth=0.5)


def _score(gt, detections, options: TemporalOptions) -> float:
    return st_iou(gt, decide_all(detections, options))[0]


def _only(options: TemporalOptions, step: str, on: TemporalOptions) -> TemporalOptions:
    """`options` with one step's options taken from `on`."""
    names = ("adaptive", "zscore") if step == "adaptive" else (step,)
    return dataclasses.replace(options, **{n: getattr(on, n) for n in names})


def tune(gt, detections, start: TemporalOptions, rounds: int = 2) -> TemporalOptions:
    """Coordinate ascent of mean ST-IoU (offline) over GRID, adaptive tried on and off."""
    best, best_score = start, _score(gt, detections, start)
    for _ in range(rounds):
        for name, values in [("adaptive", [False, True]), *GRID.items()]:
            for value in values:
                cand = dataclasses.replace(best, **{name: value})
                s = _score(gt, detections, cand)
                if s > best_score + 1e-9:
                    best, best_score = cand, s
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--samples", type=pathlib.Path, default=None)
    parser.add_argument("--values", default=None, help="TemporalOptions fields as JSON")
    parser.add_argument("--tune", action="store_true", help="search the values on these videos")
    args = parser.parse_args(argv)
    config, samples, records = run_videos(args.workdir, args.samples)
    gt = {r.video_id: dict(r.boxes) for r in records}
    cache = args.workdir / "ablation" / f"detections_{samples.name}.npz"
    detections, seconds = cached_detections(args.workdir, records, cache, predict_options(config))
    frames = sum(len(d) for d in detections.values())
    coco = coco_map(gt, detections, {v: sorted(d) for v, d in detections.items()})
    print(
        f"{len(records)} videos, {frames} frames ({frames / seconds:.1f} frames/s); "
        f"frame mAP50 {coco['mAP50']:.4f}, mAP50-95 {coco['mAP50-95']:.4f}"
    )

    per_frame = TemporalOptions(mode="frame")
    tuned_thr = max(GRID["threshold"], key=lambda t: _score(gt, detections, _thr(per_frame, t)))
    base = _thr(per_frame, tuned_thr)
    if args.values:
        on = TemporalOptions(**{**OFF, **json.loads(args.values)})
    else:
        on = temporal_options(config)
        on = dataclasses.replace(
            on, **{k: v for k, v in MIDDLE.items() if getattr(on, k) == OFF[k]}
        )
    if args.tune:
        on = tune(gt, detections, dataclasses.replace(on, mode="offline", threshold=tuned_thr))
        print("tuned:", json.dumps(dataclasses.asdict(on)))
    on = dataclasses.replace(on, threshold=on.threshold if args.tune else tuned_thr)

    rows = [
        (
            "per-frame, threshold 0.25 (the original's rule)",
            _score(gt, detections, _thr(per_frame, 0.25)),
            None,
        ),
        (
            f"per-frame, threshold {tuned_thr} (best on these videos)",
            _score(gt, detections, base),
            None,
        ),
    ]
    print("\n| decisions | offline | causal |\n|---|---|---|")
    for label, s, _ in rows:
        print(f"| {label} | {s:.4f} | {s:.4f} |")
    start_opts = dataclasses.replace(base, threshold=on.threshold)
    added = {m: dataclasses.replace(start_opts, mode=m) for m in ("offline", "causal")}
    for step in STEPS:
        added = {m: _only(o, step, on) for m, o in added.items()}
        s = {m: _score(gt, detections, o) for m, o in added.items()}
        print(f"| + {_describe(step, on)} | {s['offline']:.4f} | {s['causal']:.4f} |")
    full = {m: dataclasses.replace(on, mode=m) for m in ("offline", "causal")}
    for step in STEPS:
        s = {
            m: _score(gt, detections, _only(o, step, TemporalOptions(**OFF)))
            for m, o in full.items()
        }
        print(f"| all but {step} | {s['offline']:.4f} | {s['causal']:.4f} |")
    print(f"\nvalues: {json.dumps(dataclasses.asdict(on))}")
    return 0


def _thr(options: TemporalOptions, threshold: float) -> TemporalOptions:
    return dataclasses.replace(options, threshold=threshold)


def _describe(step: str, on: TemporalOptions) -> str:
    if step == "adaptive":
        return f"adaptive threshold (z {on.zscore})"
    return f"{step} {getattr(on, step)}"


if __name__ == "__main__":
    raise SystemExit(main())
