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

COCO mAP lives in `jdet.coco_eval` (`coco_map` is importable from here too), running a model
over a folder (``--workdir``, the trainer's evaluation) in `jdet.eval_run`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jdet.coco_eval import _check_detections, _names, coco_map
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
    from jdet.eval_run import evaluate_records, format_metrics, write_report
    from jdet.predict import CheckpointError, PredictOptions, Predictor, load_run, load_samples

    try:
        config, _, _ = load_run(args.workdir)
        samples = args.samples
        if samples is None:
            from jdet.data.prepare import eval_samples

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


def _one_line(text: str) -> str:
    """Collapse whitespace so the error stays on one line."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
