"""Running a model over a folder and reporting it (the trainer's evaluation, ``python -m
jdet.evaluate --workdir``): `evaluate_records` → `EvalResult`, `format_metrics`,
`write_report`; `run_videos` and `cached_detections` for scripts that score a run several
ways. The metrics themselves are `jdet.evaluation.st_iou` and `jdet.evaluation.coco`."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from jdet.checkpoint import CheckpointError, load_run
from jdet.data.prepare import eval_samples
from jdet.data.video import read_frames
from jdet.evaluation import plots
from jdet.evaluation.coco import coco_map
from jdet.evaluation.st_iou import per_video_table, st_iou
from jdet.inference.pipeline import PredictOptions, load_samples, predict_folder
from jdet.inference.predictor import Predictor
from jdet.inference.temporal import TemporalOptions, decide_all
from jdet.submission import (
    Detections,
    Tracks,
    load_detections,
    save_detections,
    write_submission,
)


@dataclasses.dataclass
class EvalResult:
    """What one evaluation of a model over a folder produced."""

    metrics: dict[str, float]  # metrics/st_iou, metrics/mAP50, metrics/mAP50-95
    per_video: dict[str, float]  # ST-IoU per video
    gt: Tracks
    detections: Detections
    submission: Tracks
    coco: dict[str, Any]  # coco_map's full result (precision curve, counts)
    seconds: float


def evaluate_records(
    predictor: Predictor,
    records: Sequence[Any],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    temporal: TemporalOptions = TemporalOptions(),
    progress: bool = True,
) -> EvalResult:
    """Run `predictor` over `records` (jdet.data.zalo.VideoRecord) and score it: ST-IoU on the
    submission (the boxes `temporal` decides to report) and COCO mAP on all detections with
    the detector's own scores (before appearance re-scoring, which puts each video's scores on
    its own scale), both over the frames that were run."""
    start = time.perf_counter()
    own: dict = {}
    detections = predict_folder(
        predictor,
        records,
        stride=stride,
        max_frames=max_frames,
        progress=progress,
        detector_scores=own,
    )
    seconds = time.perf_counter() - start
    frames = {vid: sorted(d) for vid, d in detections.items()}
    # Only the frames that were run count (stride / max_frames): GT elsewhere is not scored.
    gt = {
        r.video_id: {f: b for f, b in r.boxes.items() if f in detections[r.video_id]}
        for r in records
    }
    # With a stride the temporal step also fills frames between those run; they are not scored.
    submission = {
        vid: {f: b for f, b in boxes.items() if f in detections[vid]}
        for vid, boxes in decide_all(detections, temporal).items()
    }
    mean, per_video = st_iou(gt, submission)
    coco = coco_map(gt, own, frames)
    metrics = {
        "metrics/st_iou": float(mean),
        "metrics/mAP50": float(coco["mAP50"]),
        "metrics/mAP50-95": float(coco["mAP50-95"]),
    }
    return EvalResult(metrics, per_video, gt, detections, submission, coco, seconds)


def format_metrics(result: EvalResult) -> str:
    """One line: ST-IoU, mAP50, mAP50-95, frames and frames/s."""
    m = result.metrics
    frames = sum(len(d) for d in result.detections.values())
    return (
        f"ST-IoU {m['metrics/st_iou']:.4f}  mAP50 {m['metrics/mAP50']:.4f}  "
        f"mAP50-95 {m['metrics/mAP50-95']:.4f}  ({frames} frames, "
        f"{frames / max(result.seconds, 1e-9):.1f} frames/s)"
    )


def write_report(
    workdir: str | pathlib.Path, result: EvalResult, records: Sequence[Any]
) -> list[pathlib.Path]:
    """workdir/eval/{submission.json, metrics.json, per_video.txt} and workdir/plots/
    {pr_curve, st_iou_per_video, samples}.png; returns the files written."""
    workdir = pathlib.Path(workdir)
    out, plot_dir = workdir / "eval", workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = [write_submission(out / "submission.json", result.submission, list(result.gt))]
    summary = {**result.metrics, "per_video": result.per_video, "seconds": result.seconds}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = per_video_table(result.gt, result.submission, result.per_video)
    (out / "per_video.txt").write_text(table + "\n" + format_metrics(result) + "\n")
    written += [out / "metrics.json", out / "per_video.txt"]
    coco = result.coco
    written.append(
        plots.plot_pr_curve(
            coco["recall_points"],
            coco["precision_curve"],
            plot_dir / "pr_curve.png",
            f"PR at IoU 0.5 (mAP50 {result.metrics['metrics/mAP50']:.3f})",
        )
    )
    written.append(
        plots.plot_per_video(
            result.per_video, plot_dir / "st_iou_per_video.png", result.metrics["metrics/st_iou"]
        )
    )
    written.append(plots.plot_samples(_sample_frames(result, records), plot_dir / "samples.png"))
    return written


def _sample_frames(result: EvalResult, records: Sequence[Any], per_video: int = 2) -> list[dict]:
    """A few frames per video (one with the object when there is one, one in the middle)."""
    samples = []
    for record in list(records)[:6]:
        run = sorted(result.detections.get(record.video_id, {}))
        if not run:
            continue
        with_gt = [f for f in run if f in result.gt[record.video_id]]
        picks = sorted({with_gt[len(with_gt) // 2] if with_gt else run[0], run[len(run) // 3]})
        images = read_frames(record.video_path, picks[:per_video])
        for frame, image in zip(picks, images):
            dets = result.detections[record.video_id][frame]
            samples.append(
                {
                    "image": image,
                    "title": f"{record.video_id} #{frame}",
                    "gt": result.gt[record.video_id].get(frame),
                    "pred": dets[dets[:, 4] >= 0.25][:3] if len(dets) else dets,
                }
            )
    return samples


def run_videos(workdir: str | pathlib.Path, samples: str | pathlib.Path | None = None):
    """(config, samples folder, records) to evaluate a run on: `samples`, else the run's
    validation videos. CheckpointError naming the run when it has none and none is given."""
    config, _, _ = load_run(workdir)
    folder = samples or eval_samples(config, pathlib.Path(workdir))
    if folder is None:
        raise CheckpointError(workdir, "the run has no validation videos: pass --samples ROOT")
    return config, pathlib.Path(folder), load_samples(folder)


def cached_detections(
    workdir: str | pathlib.Path,
    records: Sequence[Any],
    cache: pathlib.Path,
    options: PredictOptions,
) -> tuple[Detections, float]:
    """The run's detections on every frame of `records` and the seconds they took, kept in
    `cache` (.npz, with the time in a .json beside it) and read from there when present."""
    timing = cache.with_suffix(".json")
    if cache.exists() and timing.exists():
        return load_detections(cache), json.loads(timing.read_text())["seconds"]
    predictor = Predictor.from_checkpoint(workdir, options)
    start = time.perf_counter()
    detections = predict_folder(predictor, records)
    seconds = time.perf_counter() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_detections(cache, detections)
    timing.write_text(json.dumps({"seconds": seconds}) + "\n")
    return detections, seconds
