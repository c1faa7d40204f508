"""The quickstart's result table: a trained run vs training-free baselines on the same videos.

    python3 scripts/compare_baselines.py --workdir runs/quickstart [--samples ROOT] [--reuse]

ROOT defaults to the run's validation videos (`jdet.data.prepare.eval_samples`: for the quickstart,
synthetic videos from a seed stream never used for training). Rows: the run's best weights
(`jdet.inference`) at the config's confidence threshold and at one tuned on separate synthetic
videos (as the template baseline's threshold was), `jdet.baselines.template`
(multi-scale template matching with its defaults), a full-frame box on every frame, and no
boxes. All are written as challenge submissions under WORKDIR/compare/ and scored by
`jdet.evaluation`: ST-IoU (the challenge's metric) and mAP50 (baselines have no scores: every
box counts with score 1). Prints a markdown table. With ``--reuse``, a baseline whose
submission is already in WORKDIR/compare/ (from an earlier run of this script, or written there
by ``python -m jdet.baselines.template --samples ROOT --out WORKDIR/compare/template.json``) is
scored from it instead of run again: template matching takes minutes per video at 640×360;
its frames/s is then not measured ("–").
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from jdet.baselines import template as baseline
from jdet.config import predict_options, temporal_options
from jdet.data.prepare import VAL_SEED_OFFSET, ensure_synthetic
from jdet.evaluation.coco import coco_map
from jdet.evaluation.run import evaluate_records, run_videos, write_report
from jdet.evaluation.st_iou import st_iou, tune_conf_threshold
from jdet.inference.pipeline import load_samples
from jdet.inference.predictor import Predictor
from jdet.submission import read_submission, submission_from_detections


def _as_detections(tracks):
    return {
        vid: {f: np.array([[*box, 1.0]], np.float32) for f, box in frames.items()}
        for vid, frames in tracks.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--samples", type=pathlib.Path, default=None)
    parser.add_argument(
        "--reuse", action="store_true", help="score baseline submissions already in compare/"
    )
    args = parser.parse_args(argv)
    config, samples, records = run_videos(args.workdir, args.samples)
    gt = {r.video_id: dict(r.boxes) for r in records}
    frames = {r.video_id: range(r.num_frames) for r in records}
    out = args.workdir / "compare"
    out.mkdir(exist_ok=True)
    rows = []

    decisions = temporal_options(config)
    predictor = Predictor.from_checkpoint(args.workdir, predict_options(config))
    step = predictor.description.split("(step ")[-1].split(",")[0]
    name = f"jdet (best weights, step {step})" if "(step " in predictor.description else "jdet"
    result = evaluate_records(predictor, records, temporal=decisions)
    write_report(out / "jdet", result, records)
    frames_run = sum(len(d) for d in result.detections.values())
    fps = frames_run / result.seconds
    rows.append(
        (
            f"{name}, {decisions.mode} decisions, conf {decisions.threshold}",
            result.metrics["metrics/st_iou"],
            result.metrics["metrics/mAP50"],
            fps,
        )
    )
    if config.data.source == "synthetic":
        # The template baseline's threshold was tuned on a separate synthetic set; do the same
        # for jdet's confidence threshold: videos from a third seed stream, never reported.
        options = dict(config.data.synthetic.to_dict(), num_videos=max(config.data.val_videos, 4))
        tune_dir = out / "tune_videos"
        ensure_synthetic(tune_dir, config.seed + 2 * VAL_SEED_OFFSET, options)
        tune_records = load_samples(tune_dir)
        tuned = evaluate_records(predictor, tune_records, progress=False)
        conf, tune_st = tune_conf_threshold(tuned.gt, tuned.detections)
        mean, _ = st_iou(gt, submission_from_detections(result.detections, conf))
        rows.append(
            (
                f"{name}, conf {conf} (tuned: {tune_st:.3f} on {len(tune_records)} other videos)",
                mean,
                result.metrics["metrics/mAP50"],
                fps,
            )
        )

    for method in ("template", "full-frame", "empty"):
        path = out / f"{method}.json"
        start = time.perf_counter()
        if not (args.reuse and path.exists()):
            if baseline.main(["--samples", str(samples), "--out", str(path), "--method", method]):
                return 2
            seconds = time.perf_counter() - start
        else:
            seconds = float("nan")
        tracks = read_submission(path)
        mean, _ = st_iou(gt, tracks)
        coco = coco_map(gt, _as_detections(tracks), frames)
        total = sum(r.num_frames for r in records)
        rows.append((method, mean, coco["mAP50"], total / seconds))

    print()
    print(f"{len(records)} videos, {sum(r.num_frames for r in records)} frames: {samples}")
    print()
    print("| method | ST-IoU | mAP50 | frames/s |")
    print("|---|---:|---:|---:|")
    for name, st, ap, fps in rows:
        print(f"| {name} | {st:.3f} | {ap:.3f} | {'–' if np.isnan(fps) else f'{fps:.1f}'} |")
    jdet_rows = [r for r in rows if r[0].startswith("jdet")]
    best = max(r[1] for r in rows if not r[0].startswith("jdet"))
    if best > 0:
        print(f"\njdet / best baseline ST-IoU: {max(r[1] for r in jdet_rows) / best:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
