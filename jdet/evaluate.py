"""Command line: score a submission, or evaluate a trained run.

    python -m jdet.evaluate --annotations A.json --submission S.json
    python -m jdet.evaluate --samples ROOT --submission S.json   # ROOT/annotations/annotations.json
    python -m jdet.evaluate --workdir RUN [--samples ROOT] [--stride N] [--max-frames N]

The first two print the per-video ST-IoU table and the mean (exit 0); with ``--samples``, every
``ROOT/samples/<video_id>/`` folder counts as a video, so negative videos absent from
annotations.json are scored too. ``--workdir`` runs the run's best (else latest) weights over
``--samples`` (default: the run's validation videos) and writes ST-IoU, mAP50, mAP50-95,
eval/ and plots/ into the run. A malformed input prints one line naming the file and field to
stderr (exit 2). The metrics are in `jdet.evaluation`.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

from jdet import _malloc, _xla_defaults
from jdet.checkpoint import CheckpointError, load_run
from jdet.cli import one_line
from jdet.config import predict_options, temporal_options
from jdet.data.prepare import eval_samples
from jdet.data.report import DatasetError
from jdet.evaluation.run import evaluate_records, format_metrics, write_report
from jdet.evaluation.st_iou import per_video_table, st_iou
from jdet.inference import appearance, temporal
from jdet.inference.pipeline import load_samples
from jdet.inference.predictor import Predictor
from jdet.submission import SubmissionError, load_ground_truth, names, read_submission


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
    appearance.add_flag(parser, "the run's eval.appearance")
    temporal.add_flags(parser, "the run's eval.temporal config")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point → exit status: 0 scored, 2 a malformed or inconsistent input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _xla_defaults.apply()  # before anything starts a JAX backend
    _malloc.fix_mmap_threshold()  # flat memory on long videos
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
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    missing = [v for v in gt if v not in pred]
    print(per_video_table(gt, pred, per_video))
    if missing:
        print(
            f"note: {len(missing)} video(s) absent from the submission scored as empty: "
            f"{names(missing)}"
        )
    print(f"mean ST-IoU: {mean:.4f} over {len(per_video)} videos")
    return 0


def _main_workdir(args: argparse.Namespace) -> int:
    try:
        beta = (
            None
            if args.appearance is None
            else appearance.check_beta(args.appearance, "--appearance")
        )
        config, _, _ = load_run(args.workdir)
        samples = args.samples
        if samples is None:
            samples = eval_samples(config, args.workdir)
            if samples is None:
                raise CheckpointError(
                    args.workdir, "the run has no validation set: pass --samples ROOT"
                )
        e = config.eval
        temporal_opts = temporal.from_flags(args, temporal_options(config))
        options = predict_options(config)
        if beta is not None:
            options = dataclasses.replace(options, appearance=beta)
        predictor = Predictor.from_checkpoint(args.workdir, options)
        records = load_samples(samples)
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"jdet.evaluate: {predictor.description} on {samples} ({len(records)} videos)")
    stride = e.stride if args.stride is None else args.stride
    max_frames = (e.max_frames or None) if args.max_frames is None else args.max_frames
    result = evaluate_records(
        predictor, records, stride=stride, max_frames=max_frames, temporal=temporal_opts
    )
    written = write_report(args.workdir, result, records)
    print(per_video_table(result.gt, result.submission, result.per_video))
    print(format_metrics(result))
    print(f"wrote {', '.join(str(p.relative_to(args.workdir)) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
