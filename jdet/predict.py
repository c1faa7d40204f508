"""Command line: a trained run + a folder in the challenge layout → the submission JSON.

    python -m jdet.predict --checkpoint runs/quickstart --samples data/test --out submission.json
    python -m jdet.predict --backend onnx --model exported/qs --samples data/test --out s.json

`--checkpoint` takes a run directory (its `best/` weights when evaluation kept some, else its
latest checkpoint), a `checkpoints/` folder, or a weights folder written by the trainer. With
`--backend onnx` the model is instead a folder written by `python -m jdet.export` (`--model`),
run on onnxruntime with NMS in NumPy; that path never imports JAX, as a board would run it,
and its appearance and temporal defaults are the exported run's. Which
box each frame reports is decided over time (`jdet.inference.temporal`: thresholds,
hysteresis, gap filling, minimum interval length, smoothing, track rescoring; offline or
causal): the run's `eval.temporal` config, which the flags override; `--temporal frame` keeps
the per-frame rule (highest box ≥ `--conf`). Before that, boxes are re-scored by their colour
similarity to the reference photos when the run's `eval.appearance` (or `--appearance`) is > 0
(`jdet.inference.appearance`). Every video is present, with
`"detections": []` when nothing is found.

Also written: the per-video wall time as CSV (`video_id,time_ms`; `--times`, default
time_submission.csv beside `--out`) and, with `--save-video DIR`, each video with the reported
boxes drawn (green; the ground truth in magenta where the folder has annotations). The
library is `jdet.inference`; this command does not import the training code.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

from jdet import _malloc, _xla_defaults
from jdet.data import video as video_io
from jdet.data.report import DatasetError
from jdet.data.zalo import MIN_REFERENCES
from jdet.inference import appearance, temporal
from jdet.inference.overlay import write_overlay
from jdet.inference.pipeline import BasePredictor, PredictOptions, load_samples, predict_folder
from jdet.inference.temporal import TemporalOptions
from jdet.submission import write_submission


def write_times(path: pathlib.Path, seconds: dict[str, float]) -> pathlib.Path:
    """The per-video wall times as CSV: a `video_id,time_ms` header, one row per video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{vid},{round(1000 * s)}" for vid, s in seconds.items()]
    path.write_text("\n".join(["video_id,time_ms", *rows]) + "\n")
    return path


def _load(
    args: argparse.Namespace, options: PredictOptions
) -> tuple[BasePredictor, TemporalOptions]:
    """The predictor the flags name and its temporal decisions before the flags' overrides."""
    if args.backend == "onnx":
        from jdet.inference.onnx_predictor import OnnxPredictor

        predictor = OnnxPredictor.from_dir(args.model, options, fp16=args.fp16)
        section = predictor.manifest.get("temporal")
        if section is None:  # a run without eval.temporal: the per-frame rule
            return predictor, TemporalOptions(mode="frame")
        where = f"{predictor.directory}/jdet_export.json temporal."
        return predictor, temporal.from_mapping(section, prefix=where)
    from jdet.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, options)
    return predictor, temporal.from_eval_config(predictor.config.eval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jdet.predict",
        description="Run a trained jdet model over a challenge-layout folder and write the "
        "submission JSON.",
    )
    parser.add_argument("--checkpoint", help="run directory, checkpoints/ or best/ (JAX backend)")
    parser.add_argument(
        "--backend",
        choices=("jax", "onnx"),
        default="jax",
        help="jax: a training run (--checkpoint); onnx: an export (--model), no JAX imported",
    )
    parser.add_argument("--model", help="folder written by python -m jdet.export (onnx backend)")
    parser.add_argument(
        "--fp16", action="store_true", help="onnx backend: the float16 files (export --fp16)"
    )
    parser.add_argument("--samples", required=True, help="folder with samples/<video_id>/...")
    parser.add_argument("--out", required=True, help="submission JSON to write")
    parser.add_argument("--stride", type=int, default=1, help="predict every n-th frame")
    parser.add_argument("--max-frames", type=int, default=None, help="per video (quick looks)")
    parser.add_argument("--iou", type=float, default=PredictOptions.iou_threshold, help="NMS")
    parser.add_argument(
        "--times",
        type=pathlib.Path,
        default=None,
        help="per-video wall time CSV (video_id,time_ms); default time_submission.csv beside --out",
    )
    parser.add_argument(
        "--save-video",
        type=pathlib.Path,
        default=None,
        metavar="DIR",
        help="also write DIR/<video_id>.mp4 with the boxes drawn",
    )
    parser.add_argument("--batch-size", type=int, default=PredictOptions.batch_size)
    parser.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="PX",
        help="small objects: also run overlapping PX × PX crops of each frame (0: off)",
    )
    parser.add_argument("--tile-overlap", type=float, default=PredictOptions.tile_overlap)
    appearance.add_flag(parser, "the run's eval.appearance")
    parser.add_argument(
        "--min-references",
        type=int,
        default=MIN_REFERENCES,
        help="reference photos each sample must have (img_1..img_K; fewer for K-shot tests)",
    )
    temporal.add_flags(parser, "the run's eval.temporal config")
    args = parser.parse_args(argv)
    _xla_defaults.apply()  # before anything starts a JAX backend
    _malloc.fix_mmap_threshold()  # flat memory on long videos
    if args.backend == "jax" and not args.checkpoint:
        parser.error("--checkpoint is required (or --backend onnx --model DIR)")
    if args.backend == "onnx" and not args.model:
        parser.error("--backend onnx needs --model DIR (a folder written by python -m jdet.export)")
    if args.stride < 1 or args.batch_size < 1 or args.min_references < 1:
        parser.error("--stride, --batch-size and --min-references must be >= 1")
    try:  # the flags' own values, checked before anything is loaded
        temporal.from_flags(args, TemporalOptions())
    except ValueError as err:
        parser.error(str(err))
    try:
        options = PredictOptions(
            iou_threshold=args.iou,
            batch_size=args.batch_size,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            appearance=args.appearance,
        )
    except ValueError as err:
        parser.error("--" + str(err).replace("_", "-", 1))
    try:
        records = load_samples(args.samples, min_references=args.min_references)
        predictor, defaults = _load(args, options)
        decisions = temporal.from_flags(args, defaults)
    except (DatasetError, FileNotFoundError, ValueError) as err:  # CheckpointError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"jdet.predict: {predictor.description}; {len(records)} video(s)", flush=True)
    seconds: dict[str, float] = {}
    try:
        detections = predict_folder(
            predictor, records, stride=args.stride, max_frames=args.max_frames, seconds=seconds
        )
    except video_io.VideoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tracks = {}
    for record in records:  # the decision is part of each video's time
        start = time.perf_counter()
        tracks[record.video_id] = temporal.decide(
            detections[record.video_id], decisions, record.video_id
        )
        seconds[record.video_id] += time.perf_counter() - start
    path = write_submission(args.out, tracks, [r.video_id for r in records])
    times = args.times or pathlib.Path(args.out).with_name("time_submission.csv")
    write_times(times, seconds)
    frames = sum(len(d) for d in detections.values())
    total = sum(seconds.values())
    print(
        f"wrote {path}: {sum(len(t) for t in tracks.values())} boxes in {frames} frames of "
        f"{len(records)} video(s) ({decisions.mode} decisions), "
        f"{frames / max(total, 1e-9):.1f} frames/s; {times}"
    )
    if args.save_video is not None:
        for record in records:
            out = write_overlay(
                record.video_path,
                args.save_video / f"{record.video_id}.mp4",
                tracks[record.video_id],
                record.boxes,
            )
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
