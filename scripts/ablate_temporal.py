"""Temporal decisions, step by step: the ablation table of docs/inference.md §3.

    python3 scripts/ablate_temporal.py --workdir runs/photo0 [--samples ROOT] [--values JSON]
        [--appearance BETA]

Runs the run's best (else latest) weights once over ROOT (default: the run's validation
videos, for configs/photo.py the held-out objects), every frame, and keeps the scored boxes
(WORKDIR/ablation/; reused when present). The boxes are re-scored by appearance as the run's
config says (`eval.appearance`), or with --appearance BETA (0: the detector's scores). Then
it scores mean ST-IoU, offline and causal, for:

- the per-frame rule at 0.25 (the original) and at the best threshold on these videos;
- each temporal step added in turn (track rescoring, adaptive threshold, hysteresis,
  association, gap filling, minimum length, smoothing), at its best value on these videos
  given the steps kept before it (offline ST-IoU; a step is kept when it helps: forward
  selection; track rescoring searches the threshold again, its scores have their own scale),
  or at the values given by --values;
- the chosen options, and the chosen options without each of their steps;
- the options the same selection chooses on causal ST-IoU (what a causal run should use:
  steps that help offline, such as a minimum length, can cost a causal run its first frames).

The values found are what jdet's defaults are set from; they are tuned and scored on the same
videos, so the table is optimistic for them: score them on other held-out objects.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

from jdet.config import predict_options
from jdet.evaluation.coco import coco_map
from jdet.evaluation.run import cached_detections, run_videos
from jdet.evaluation.st_iou import st_iou
from jdet.inference.temporal import TemporalOptions, decide_all

# The steps in the order they are added, each with the option values that turn it on.
STEPS = ("link", "adaptive", "keep_ratio", "assoc_iou", "max_gap", "min_length", "smooth")
OFF = {f.name: f.default for f in dataclasses.fields(TemporalOptions)}
GRID = {
    "link": [3, 5, 10],
    "threshold": [0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
    "zscore": [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0],
    "keep_ratio": [0.3, 0.5, 0.7, 0.85, 1.0],
    "assoc_iou": [0.0, 0.1, 0.3, 0.5],
    "max_gap": [0, 2, 4, 8, 16],
    "min_length": [1, 2, 3, 5, 8],
    "smooth": [0.0, 0.3, 0.5, 0.7],
}


def _score(gt, detections, options: TemporalOptions) -> float:
    return st_iou(gt, decide_all(detections, options))[0]


def _only(options: TemporalOptions, step: str, on: TemporalOptions) -> TemporalOptions:
    """`options` with one step's options taken from `on`."""
    names = {"adaptive": ("adaptive", "zscore"), "link": ("link", "threshold")}.get(step, (step,))
    return dataclasses.replace(options, **{n: getattr(on, n) for n in names})


def _candidates(step: str, base: TemporalOptions) -> list[TemporalOptions]:
    """`base` with one step turned on, at each value of its grid."""
    if step == "adaptive":
        return [dataclasses.replace(base, adaptive=True, zscore=z) for z in GRID["zscore"]]
    if step == "link":  # track scores are on their own scale: the threshold is searched again
        return [
            dataclasses.replace(base, link=k, threshold=t)
            for k in GRID["link"]
            for t in GRID["threshold"]
        ]
    return [dataclasses.replace(base, **{step: v}) for v in GRID[step] if v != OFF[step]]


def forward_selection(gt, detections, start: TemporalOptions, select: str = "offline"):
    """Each step in turn, at its best value (ST-IoU in mode `select`) given the steps kept
    before it; kept when it helps. Returns [(step, its best options, offline, causal, kept)]
    and the options with every kept step (in mode `select`)."""

    def score(o: TemporalOptions) -> float:
        return _score(gt, detections, _mode(o, select))

    rows, current = [], _mode(start, select)
    current_score = score(current)
    for step in STEPS:
        best = max(_candidates(step, current), key=score)
        offline = _score(gt, detections, _mode(best, "offline"))
        causal = _score(gt, detections, _mode(best, "causal"))
        kept = score(best) > current_score + 1e-9
        rows.append((step, best, offline, causal, kept))
        if kept:
            current, current_score = best, score(best)
    return rows, current


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--samples", type=pathlib.Path, default=None)
    parser.add_argument(
        "--values", default=None, help="TemporalOptions fields as JSON (default: search them)"
    )
    parser.add_argument(
        "--appearance", type=float, default=None, help="default: the run's eval.appearance"
    )
    args = parser.parse_args(argv)
    config, samples, records = run_videos(args.workdir, args.samples)
    gt = {r.video_id: dict(r.boxes) for r in records}
    options = predict_options(config)
    if args.appearance is not None:
        options = dataclasses.replace(options, appearance=args.appearance)
    name = f"detections_{samples.name}"
    if options.appearance:
        name += f"_appearance{options.appearance:g}"
    cache = args.workdir / "ablation" / f"{name}.npz"
    detections, seconds = cached_detections(args.workdir, records, cache, options)
    frames = sum(len(d) for d in detections.values())
    coco = coco_map(gt, detections, {v: sorted(d) for v, d in detections.items()})
    print(
        f"{len(records)} videos, {frames} frames ({frames / seconds:.1f} frames/s), "
        f"appearance {options.appearance:g}; "
        f"frame mAP50 {coco['mAP50']:.4f}, mAP50-95 {coco['mAP50-95']:.4f}"
    )

    per_frame = TemporalOptions(mode="frame")
    thr = max(GRID["threshold"], key=lambda t: _score(gt, detections, _thr(per_frame, t)))
    start = dataclasses.replace(per_frame, mode="offline", threshold=thr)
    if args.values:  # given values: every step as given, no search
        chosen = TemporalOptions(**{**OFF, "threshold": thr, **json.loads(args.values)})
        rows = []
        for step in STEPS:
            o = _only(start, step, chosen)
            rows.append((step, o, *(_score(gt, detections, _mode(o, m)) for m in MODES), True))
        for_causal = None
    else:
        rows, chosen = forward_selection(gt, detections, start)
        for_causal = forward_selection(gt, detections, start, select="causal")[1]
    both = lambda o: " | ".join(f"{_score(gt, detections, _mode(o, m)):.4f}" for m in MODES)  # noqa: E731
    print("\n| decisions | offline | causal |\n|---|---|---|")
    print(f"| per-frame, threshold 0.25 (the original's rule) | {both(_thr(per_frame, 0.25))} |")
    print(f"| per-frame, threshold {thr} (best on these videos) | {both(_thr(per_frame, thr))} |")
    for step, o, offline, causal, kept in rows:
        note = "" if kept else " (not kept)"
        print(f"| + {_describe(step, o)}{note} | {offline:.4f} | {causal:.4f} |")
    print(f"| **chosen** | {both(chosen)} |")
    if for_causal is not None:
        print(f"| chosen for causal (the same selection on causal ST-IoU) | {both(for_causal)} |")
    for step in STEPS:
        if getattr(chosen, step) != OFF[step]:
            off = TemporalOptions(threshold=chosen.threshold)
            print(f"| chosen without {step} | {both(_only(chosen, step, off))} |")
    print(f"\nchosen: {json.dumps(dataclasses.asdict(chosen))}")
    if for_causal is not None:
        print(f"chosen for causal: {json.dumps(dataclasses.asdict(for_causal))}")
    return 0


MODES = ("offline", "causal")


def _mode(options: TemporalOptions, mode: str) -> TemporalOptions:
    return dataclasses.replace(options, mode=mode)


def _thr(options: TemporalOptions, threshold: float) -> TemporalOptions:
    return dataclasses.replace(options, threshold=threshold)


def _describe(step: str, on: TemporalOptions) -> str:
    if step == "adaptive":
        return f"adaptive threshold (z {on.zscore})"
    if step == "link":
        return f"track rescoring, link {on.link} (threshold {on.threshold})"
    return f"{step} {getattr(on, step)}"


if __name__ == "__main__":
    raise SystemExit(main())
