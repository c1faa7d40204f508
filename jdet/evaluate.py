"""Evaluation metrics: the challenge's ST-IoU and COCO mAP over frames (REFERENCE.md §5).

- **ST-IoU** (per video, LOSSES.md §6): with G the frames that have a GT box and P the frames
  with a predicted box, ``Σ_{f∈G∩P} IoU(g_f, p_f) / |G ∪ P|``; the score is the mean over the
  ground truth's videos. Missing a frame and firing on a background frame each add one frame to
  the denominator.
- **mAP@0.5, mAP@0.5:0.95** over frames, COCO-style, through faster-coco-eval (one image per
  evaluated frame, one category; frames without GT are images without annotations, so a box
  fired there is a false positive).
- `submission_from_detections` turns per-frame detections into the challenge's one box per
  frame (highest score ≥ 0.25).

CLI::

    python -m jdet.evaluate --annotations A.json --submission S.json
    python -m jdet.evaluate --samples ROOT --submission S.json   # ROOT/annotations/annotations.json

prints the per-video table and the mean ST-IoU (exit 0); a malformed file prints one line naming
the file and field to stderr (exit 2). With ``--samples``, every ``ROOT/samples/<video_id>/``
folder counts as a video, so negative videos absent from annotations.json are scored too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import pathlib
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jdet.submission import Box, SubmissionError, Tracks, read_submission

__all__ = [
    "FrameDetections",
    "box_iou",
    "build_parser",
    "coco_map",
    "load_ground_truth",
    "main",
    "per_video_table",
    "st_iou",
    "st_iou_video",
    "submission_from_detections",
]

# video_id → frame → [n, 5] f32 rows (x1, y1, x2, y2, score), absolute pixels; n may be 0.
FrameDetections = dict[str, dict[int, np.ndarray]]

ANNOTATIONS_FILE = pathlib.Path("annotations") / "annotations.json"
SAMPLES_DIR = "samples"


# ----------------------------------------------------------------------------------- ST-IoU


def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two xyxy boxes (pixels), without +1 and without eps; 0.0 when the union is 0.

    Follows the original's src/metrics/st_iou.py `compute_spatial_iou` (075f362).
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in box1[:4])
    bx1, by1, bx2, by2 = (float(v) for v in box2[:4])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def st_iou_video(gt: Mapping[int, Box], pred: Mapping[int, Box]) -> float:
    """ST-IoU of one video: Σ_{f∈G∩P} IoU(gt[f], pred[f]) / |G ∪ P|.

    gt, pred: {frame: (x1, y1, x2, y2)} absolute pixels, at most one box per frame.
    Empty cases: 0.0 whenever G ∪ P is empty, i.e. also when both GT and prediction are empty
    (a negative video correctly left blank scores 0, not 1). This follows the original
    (it-dainb/zalo_ai_2025 @ 075f362, src/metrics/st_iou.py `compute_st_iou`: "if
    len(union_frames) == 0: return 0.0", asserted by src/tests/test_st_iou.py
    `test_empty_detections`) and REFERENCE.md §5.
    """
    union = len(gt.keys() | pred.keys())
    if union == 0:
        return 0.0
    both = gt.keys() & pred.keys()
    return sum(box_iou(gt[f], pred[f]) for f in both) / union


def st_iou(
    gt: Mapping[str, Mapping[int, Box]], pred: Mapping[str, Mapping[int, Box]]
) -> tuple[float, dict[str, float]]:
    """Mean ST-IoU over the ground truth's videos → (mean, {video_id: ST-IoU}).

    A video of `gt` missing from `pred` counts as predicting nothing (scores 0). Videos in
    `pred` but not in `gt` raise ValueError naming them. No videos at all gives a mean of 0.0
    (as the original's `compute_st_iou_batch`).
    """
    extra = [v for v in pred if v not in gt]
    if extra:
        raise ValueError(f"predictions for videos not in the ground truth: {_names(extra)}")
    per_video = {vid: st_iou_video(boxes, pred.get(vid, {})) for vid, boxes in gt.items()}
    mean = sum(per_video.values()) / len(per_video) if per_video else 0.0
    return mean, per_video


def _names(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# -------------------------------------------------------------------------------------- mAP


def _check_detections(video_id: str, frame: int, dets: Any) -> np.ndarray:
    """Validate one frame's detections → [n, 5] f64 array."""
    arr = np.asarray(dets, np.float64)
    if arr.size == 0:
        return arr.reshape(0, 5)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(
            f"video {video_id!r} frame {frame}: detections must be [n, 5] "
            f"(x1, y1, x2, y2, score), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"video {video_id!r} frame {frame}: non-finite detection values")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"video {video_id!r} frame {frame}: detection with x2 < x1 or y2 < y1")
    return arr


def _empty_map_result(num_images: int, num_gt: int, num_det: int) -> dict[str, Any]:
    recall_points = np.linspace(0.0, 1.0, 101)
    return {
        "mAP50": 0.0,
        "mAP50-95": 0.0,
        "precision_curve": np.zeros(101),
        "recall_points": recall_points,
        "num_images": num_images,
        "num_gt": num_gt,
        "num_det": num_det,
        "no_gt": num_gt == 0,
    }


def coco_map(
    gt: Mapping[str, Mapping[int, Box]],
    detections: Mapping[str, Mapping[int, Any]],
    frames: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, Any]:
    """COCO box AP over frames, through faster-coco-eval (pycocotools' numbers).

    gt: {video_id: {frame: (x1, y1, x2, y2)}} pixels (Tracks; at most one GT box per frame).
    detections: {video_id: {frame: [n, 5] f32 (x1, y1, x2, y2, score)}} pixels, n ≥ 0; every
        video must be in `gt`.
    frames: the evaluated frames per video (e.g. every 5th frame); default: per GT video the
        union of its GT frames and detection frames. GT boxes on frames not listed are left out;
        detections on frames not listed raise ValueError. A video of `frames` must be in `gt`.

    One COCO image per (video, evaluated frame), one category; GT `area = w·h`, `iscrowd 0`.

    Returns {"mAP50", "mAP50-95": float; "precision_curve": [101] f64, precision at IoU 0.5 at
    each recall point (area all, maxDets 100; 0 beyond the reached recall); "recall_points":
    [101] f64 (0, 0.01, …, 1); "num_images", "num_gt", "num_det": int; "no_gt": bool}.
    Without any GT box COCO's AP is undefined (-1): mAPs are reported as 0.0 with
    "no_gt": True. Without detections AP is 0.0 (COCO is not run).
    """
    extra = [v for v in detections if v not in gt]
    if extra:
        raise ValueError(f"detections for videos not in the ground truth: {_names(extra)}")
    if frames is not None:
        extra = [v for v in frames if v not in gt]
        if extra:
            raise ValueError(f"frames for videos not in the ground truth: {_names(extra)}")

    images, annotations, results = [], [], []
    for video_id, gt_boxes in gt.items():
        video_dets = detections.get(video_id, {})
        if frames is None:
            evaluated = sorted(set(gt_boxes) | set(video_dets))
        else:
            evaluated = sorted({int(f) for f in frames.get(video_id, ())})
            outside = sorted(set(video_dets) - set(evaluated))
            if outside:
                raise ValueError(
                    f"video {video_id!r}: detections on frames not evaluated: {outside[:5]}"
                )
        for frame in evaluated:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{video_id}/{frame}"})
            if frame in gt_boxes:
                x1, y1, x2, y2 = (float(v) for v in gt_boxes[frame])
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            if frame in video_dets:
                for x1, y1, x2, y2, score in _check_detections(video_id, frame, video_dets[frame]):
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score,
                        }
                    )

    if not annotations or not results:
        # No GT: COCO excludes the category (-1). No detections: AP is 0; older pycocotools'
        # loadRes also fails on an empty list, so COCO is not run at all.
        return _empty_map_result(len(images), len(annotations), len(results))

    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*args, **kwargs) -> None:
        return None

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.print_function = quiet
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        coco_dt.print_function = quiet
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    params = evaluator.params
    # precision: [T IoU thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = np.asarray(evaluator.eval["precision"], np.float64)
    area_all = params.areaRngLbl.index("all")
    max_dets = len(params.maxDets) - 1  # 100
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    curve = np.clip(precision[iou50, :, 0, area_all, max_dets], 0.0, None)  # [101]
    return {
        "mAP50": float(evaluator.stats[1]),
        "mAP50-95": float(evaluator.stats[0]),
        "precision_curve": curve,
        "recall_points": np.asarray(params.recThrs, np.float64),
        "num_images": len(images),
        "num_gt": len(annotations),
        "num_det": len(results),
        "no_gt": False,
    }


# ------------------------------------------------------------------------------ submission


def submission_from_detections(
    detections: Mapping[str, Mapping[int, Any]], conf_threshold: float = 0.25
) -> Tracks:
    """Per frame the highest-score box with score ≥ conf_threshold (one box per frame).

    detections: {video_id: {frame: [n, 5] (x1, y1, x2, y2, score)}}. Frames with no box above
    the threshold are left out; every video stays (an empty dict when nothing passes). Ties
    keep the first row.
    """
    tracks: Tracks = {}
    for video_id, per_frame in detections.items():
        boxes: dict[int, Box] = {}
        for frame in sorted(per_frame):
            dets = _check_detections(video_id, frame, per_frame[frame])
            keep = dets[dets[:, 4] >= conf_threshold]
            if len(keep):
                best = keep[int(np.argmax(keep[:, 4]))]
                boxes[int(frame)] = (float(best[0]), float(best[1]), float(best[2]), float(best[3]))
        tracks[video_id] = boxes
    return tracks


# ----------------------------------------------------------------------------------- report


def tune_conf_threshold(
    gt: Tracks, detections: FrameDetections, grid: Iterable[float] | None = None
) -> tuple[float, float]:
    """(threshold, mean ST-IoU) maximising ST-IoU of `submission_from_detections` over `grid`
    (default 0.01, 0.02, …, 0.95; ties go to the higher threshold). Tune on videos you do not
    report on."""
    grid = np.round(np.arange(0.01, 0.955, 0.01), 2) if grid is None else grid
    best = (0.25, -1.0)
    for conf in grid:
        mean, _ = st_iou(gt, submission_from_detections(detections, float(conf)))
        if mean >= best[1]:
            best = (float(conf), float(mean))
    return best


def per_video_table(
    gt: Mapping[str, Mapping[int, Box]],
    pred: Mapping[str, Mapping[int, Box]],
    per_video: Mapping[str, float] | None = None,
) -> str:
    """A text table: video_id, GT frames, predicted frames, frames in both, ST-IoU; then the mean.

    per_video: ST-IoU per video if already computed (default: computed with `st_iou`, which
    also checks that `pred` has no video outside `gt`).
    """
    if per_video is None:
        _, per_video = st_iou(gt, pred)
    rows = [("video_id", "GT frames", "pred frames", "both", "ST-IoU")]
    for video_id in gt:
        gt_frames, pred_frames = gt[video_id], pred.get(video_id, {})
        rows.append(
            (
                video_id,
                str(len(gt_frames)),
                str(len(pred_frames)),
                str(len(gt_frames.keys() & pred_frames.keys())),
                f"{per_video[video_id]:.4f}",
            )
        )
    scores = [per_video[v] for v in gt]
    mean = sum(scores) / len(scores) if scores else 0.0
    label = f"mean ({len(scores)} video{'' if len(scores) == 1 else 's'})"
    rows.append((label, "", "", "", f"{mean:.4f}"))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 5)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(width0)] + [c.rjust(w) for c, w in zip(row[1:], widths)]
        if n == len(rows) - 1:
            lines.append("-" * len("  ".join(cells)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- CLI


def load_ground_truth(
    annotations: str | pathlib.Path | None = None, samples: str | pathlib.Path | None = None
) -> Tracks:
    """Ground-truth Tracks from an annotations.json or from a challenge-layout split folder.

    annotations: the file itself. samples: a split ROOT; reads ROOT/annotations/annotations.json
    and adds every ROOT/samples/<video_id>/ folder without an entry as a video with no boxes
    (a negative video). The file is read with `jdet.submission.read_submission`, so errors are
    SubmissionError naming the file and field. Boxes are taken as written (not clipped).
    """
    if (annotations is None) == (samples is None):
        raise ValueError("give exactly one of annotations and samples")
    if annotations is not None:
        return read_submission(annotations)
    root = pathlib.Path(samples)
    gt = read_submission(root / ANNOTATIONS_FILE)
    folders = root / SAMPLES_DIR
    if folders.is_dir():
        for folder in sorted(folders.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                gt.setdefault(folder.name, {})
    return gt


# -- running a model over a folder (trainer, `--workdir`) -------------------------------------


@dataclasses.dataclass
class EvalResult:
    """What one evaluation of a model over a folder produced."""

    metrics: dict[str, float]  # metrics/st_iou, metrics/mAP50, metrics/mAP50-95
    per_video: dict[str, float]  # ST-IoU per video
    gt: Tracks
    detections: FrameDetections
    submission: Tracks
    coco: dict[str, Any]  # coco_map's full result (precision curve, counts)
    seconds: float


def evaluate_records(
    predictor: Any,
    records: Sequence[Any],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    conf_threshold: float = 0.25,
    progress: bool = True,
) -> EvalResult:
    """Run `predictor` (jdet.predict.Predictor) over `records` (jdet.data.zalo.VideoRecord)
    and score it: ST-IoU on the submission (top box ≥ conf_threshold per frame) and COCO mAP
    on all detections, both over the frames that were run."""
    from jdet.predict import predict_folder

    start = time.perf_counter()
    detections = predict_folder(
        predictor, records, stride=stride, max_frames=max_frames, progress=progress
    )
    seconds = time.perf_counter() - start
    frames = {vid: sorted(d) for vid, d in detections.items()}
    # Only the frames that were run count (stride / max_frames): GT elsewhere is not scored.
    gt = {
        r.video_id: {f: b for f, b in r.boxes.items() if f in detections[r.video_id]}
        for r in records
    }
    submission = submission_from_detections(detections, conf_threshold)
    mean, per_video = st_iou(gt, submission)
    coco = coco_map(gt, detections, frames)
    metrics = {
        "metrics/st_iou": float(mean),
        "metrics/mAP50": float(coco["mAP50"]),
        "metrics/mAP50-95": float(coco["mAP50-95"]),
    }
    return EvalResult(metrics, per_video, gt, detections, submission, coco, seconds)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: score a submission file, or run a trained model (--workdir)."""
    parser = argparse.ArgumentParser(
        prog="python -m jdet.evaluate",
        description="Score a submission against ground truth (ST-IoU per video and the mean), "
        "or evaluate a trained run (--workdir): ST-IoU, mAP50, mAP50-95, plots.",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="a training run directory: run its best (else latest) weights over --samples "
        "(default: the run's validation videos) and write eval/ and plots/ there",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--annotations", type=pathlib.Path, help="ground-truth annotations.json (challenge format)"
    )
    source.add_argument(
        "--samples",
        type=pathlib.Path,
        metavar="ROOT",
        help="challenge-layout split folder: reads ROOT/annotations/"
        "annotations.json; sample folders without boxes count as negatives",
    )
    parser.add_argument(
        "--submission",
        type=pathlib.Path,
        help="submission JSON (challenge format, 'detections' per video) to score",
    )
    parser.add_argument("--stride", type=int, default=None, help="--workdir: every n-th frame")
    parser.add_argument("--max-frames", type=int, default=None, help="--workdir: per video")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point → exit status: 0 scored, 2 a malformed or inconsistent input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workdir is not None:
        if args.submission is not None or args.annotations is not None:
            parser.error("--workdir runs the model: give only --samples (optional) with it")
        return _main_workdir(args)
    if args.submission is None or (args.annotations is None and args.samples is None):
        parser.error("give --submission and one of --annotations/--samples, or --workdir")
    try:
        gt = load_ground_truth(args.annotations, args.samples)
        pred = read_submission(args.submission)
        try:
            mean, per_video = st_iou(gt, pred)
        except ValueError as err:  # videos the ground truth does not know
            raise SubmissionError(args.submission, str(err)) from None
    except SubmissionError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    missing = [v for v in gt if v not in pred]
    print(per_video_table(gt, pred, per_video))
    if missing:
        print(
            f"note: {len(missing)} video(s) absent from the submission scored as empty: "
            f"{_names(missing)}"
        )
    print(f"mean ST-IoU: {mean:.4f} over {len(per_video)} videos")
    return 0


def _main_workdir(args: argparse.Namespace) -> int:
    from jdet.data.report import DatasetError
    from jdet.predict import CheckpointError, PredictOptions, Predictor, load_run, load_samples

    try:
        config, _, _ = load_run(args.workdir)
        samples = args.samples
        if samples is None:
            from jdet.trainer import eval_samples

            samples = eval_samples(config, args.workdir)
            if samples is None:
                raise CheckpointError(
                    args.workdir, "the run has no validation set: pass --samples ROOT"
                )
        e = config.eval
        options = PredictOptions.from_eval_config(e)
        predictor = Predictor.from_checkpoint(args.workdir, options)
        records = load_samples(samples)
    except (CheckpointError, DatasetError, FileNotFoundError) as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"jdet.evaluate: {predictor.description} on {samples} ({len(records)} videos)")
    stride = e.stride if args.stride is None else args.stride
    max_frames = (e.max_frames or None) if args.max_frames is None else args.max_frames
    result = evaluate_records(
        predictor, records, stride=stride, max_frames=max_frames, conf_threshold=e.conf_threshold
    )
    written = write_report(args.workdir, result, records)
    print(per_video_table(result.gt, result.submission, result.per_video))
    print(format_metrics(result))
    print(f"wrote {', '.join(str(p.relative_to(args.workdir)) for p in written)}")
    return 0


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
    import json

    from jdet import plots
    from jdet.submission import write_submission

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
    from jdet.data.video import read_frames

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


def _one_line(text: str) -> str:
    """Collapse whitespace so the error stays on one line."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
