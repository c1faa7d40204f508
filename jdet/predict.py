"""Command line: a trained run + a folder in the challenge layout → the submission JSON.

    python -m jdet.predict --checkpoint runs/quickstart --samples data/test --out submission.json

`--checkpoint` takes a run directory (its `best/` weights when evaluation kept some, else its
latest checkpoint), a `checkpoints/` folder, or a weights folder written by the trainer. The
submission keeps, per frame, the highest-scoring box with score ≥ `--conf` (the challenge
scores one box per frame); every video is present, with `"detections": []` when nothing is
found. The library is `jdet.inference.predictor`; this command does not import the training
code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from jdet import _xla_defaults
from jdet.checkpoint import CheckpointError
from jdet.data import video as video_io
from jdet.data.report import DatasetError
from jdet.data.zalo import MIN_REFERENCES
from jdet.inference.predictor import PredictOptions, Predictor, load_samples, predict_folder
from jdet.submission import submission_from_detections, write_submission


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jdet.predict",
        description="Run a trained jdet model over a challenge-layout folder and write the "
        "submission JSON.",
    )
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/ or best/")
    parser.add_argument("--samples", required=True, help="folder with samples/<video_id>/...")
    parser.add_argument("--out", required=True, help="submission JSON to write")
    parser.add_argument("--stride", type=int, default=1, help="predict every n-th frame")
    parser.add_argument("--max-frames", type=int, default=None, help="per video (quick looks)")
    parser.add_argument("--conf", type=float, default=PredictOptions.conf_threshold)
    parser.add_argument("--iou", type=float, default=PredictOptions.iou_threshold)
    parser.add_argument("--batch-size", type=int, default=PredictOptions.batch_size)
    parser.add_argument(
        "--min-references",
        type=int,
        default=MIN_REFERENCES,
        help="reference photos each sample must have (img_1..img_K; fewer for K-shot tests)",
    )
    args = parser.parse_args(argv)
    _xla_defaults.apply()  # before anything starts a JAX backend
    if args.stride < 1 or args.batch_size < 1 or args.min_references < 1:
        parser.error("--stride, --batch-size and --min-references must be >= 1")
    if not 0.0 <= args.conf <= 1.0:
        parser.error("--conf must be in [0, 1]")
    options = PredictOptions(
        conf_threshold=args.conf, iou_threshold=args.iou, batch_size=args.batch_size
    )
    try:
        records = load_samples(args.samples, min_references=args.min_references)
        predictor = Predictor.from_checkpoint(args.checkpoint, options)
    except (CheckpointError, DatasetError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"jdet.predict: {predictor.description}; {len(records)} video(s)", flush=True)
    start = time.perf_counter()
    try:
        detections = predict_folder(
            predictor, records, stride=args.stride, max_frames=args.max_frames
        )
    except video_io.VideoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    tracks = submission_from_detections(detections, args.conf)
    path = write_submission(args.out, tracks, [r.video_id for r in records])
    frames = sum(len(d) for d in detections.values())
    print(
        f"wrote {path}: {sum(len(t) for t in tracks.values())} boxes in {frames} frames of "
        f"{len(records)} video(s), {frames / max(seconds, 1e-9):.1f} frames/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
