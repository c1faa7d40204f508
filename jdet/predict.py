"""Inference: a trained run + a folder in the challenge layout → the challenge's submission JSON.

    python -m jdet.predict --checkpoint runs/quickstart --samples data/test --out submission.json

`--checkpoint` takes a run directory (its `best/` weights when evaluation kept some, else its
latest checkpoint), a `checkpoints/` folder, or a weights folder written by the trainer. Per
video the reference photos go through the support encoder once (the prototypes are cached for
the whole video); frames are decoded one at a time (constant memory on long videos),
letterboxed to the training query size, run in fixed-size batches (one compilation), decoded
and NMS'd on device, and mapped back to frame pixels. The submission keeps, per frame, the
highest-scoring box with score ≥ `--conf` (the challenge scores one box per frame); every
video is present, with `"detections": []` when nothing is found.

Python API: `Predictor.from_checkpoint(path)`, `Predictor.predict_video(...)`,
`predict_folder(...)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdet.data import transforms as T
from jdet.data import video as video_io
from jdet.data import zalo
from jdet.models.refdet import RefDet
from jdet.postprocess import postprocess, unletterbox

BEST = "best"  # workdir/best: the weights of the best evaluation so far (trainer)
FrameDetections = dict[int, np.ndarray]  # frame → [n, 5] f32 x1, y1, x2, y2, score (frame px)


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; names the path and what is wrong."""

    def __init__(self, path: str | pathlib.Path, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """Inference settings (defaults = REFERENCE.md §5: conf 0.25, NMS IoU 0.45)."""

    conf_threshold: float = 0.25  # the submission's per-frame threshold
    nms_conf_threshold: float = 0.001  # kept for mAP (COCO-style evaluation wants low scores)
    iou_threshold: float = 0.45
    max_det: int = 100
    batch_size: int = 8

    @classmethod
    def from_eval_config(cls, eval_config: Any) -> PredictOptions:
        """The `eval` section of a training config (configs/common.py) → options."""
        e = eval_config
        return cls(
            conf_threshold=e.conf_threshold,
            iou_threshold=e.iou_threshold,
            max_det=e.max_det,
            batch_size=e.batch_size,
        )


def _config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(text))


def load_run(path: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict, str]:
    """(resolved config, {"params", "batch_stats"} host arrays, description) of `path`.

    path: a run directory (prefers `best/`, else the latest checkpoint), a `checkpoints/`
    folder, or a weights folder written by the trainer (`best/`).
    """
    from jdet import checkpoint

    path = pathlib.Path(path).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    best = path / BEST if (path / BEST / checkpoint.META).exists() else None
    if best is None and (path / checkpoint.META).exists():
        best = path
    if best is not None:
        try:
            variables, meta = checkpoint.load_variables(best)
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged tree
            raise CheckpointError(best, f"cannot read the weights ({err})") from None
        if "config" not in meta:
            raise CheckpointError(best, "weights folder without a training config in its meta")
        desc = f"{best} (step {meta.get('step')}, {meta.get('metric')}={meta.get('value')})"
        return _config_from_json(json.dumps(meta["config"])), variables, desc
    folder = checkpoint.find_checkpoints(path)
    if folder is None:
        raise CheckpointError(
            path,
            "not a jdet run directory, checkpoints folder or weights folder (expected "
            "config.json + checkpoints/<step>/, or best/ with jdet_meta.json)",
        )
    config_path = next(
        (p / "config.json" for p in (path, folder.parent) if (p / "config.json").exists()), None
    )
    if config_path is None:
        raise CheckpointError(path, "config.json of the run is missing")
    manager = checkpoint.RunCheckpoints(folder, async_save=False)
    try:
        step = manager.latest_step()
        variables = manager.restore_params(step)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(folder, f"cannot restore the latest checkpoint ({err})") from None
    finally:
        manager.close()
    return _config_from_json(config_path.read_text()), variables, f"{folder}/{step}"


class Predictor:
    """A trained RefDet, ready to run on videos (jit-compiled once per input size)."""

    def __init__(
        self,
        model: RefDet,
        variables: dict[str, Any],
        *,
        query_size: int,
        support_size: int,
        options: PredictOptions = PredictOptions(),
    ):
        if query_size % 32:
            raise ValueError(f"query_size={query_size} must be a multiple of 32")
        self.model = model.clone(support_groups=0)
        self.variables = jax.device_put(
            {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        )
        self.query_size, self.support_size, self.options = query_size, support_size, options
        o = options

        def encode(variables, support):  # [1, 1, K, S, S, 3] → {scale: [1, 1, d]}
            mask = jnp.ones(support.shape[:2], bool)
            return self.model.apply(variables, support, mask, method="encode_support")["prototypes"]

        def detect(variables, query, prototypes):  # query [B, s, s, 3]
            b = query.shape[0]
            protos = {k: jnp.broadcast_to(p, (b, *p.shape[1:])) for k, p in prototypes.items()}
            out = self.model.apply(
                variables, query, protos, jnp.ones((b, 1), bool), method="detect"
            )
            return postprocess(
                out,
                max_det=o.max_det,
                iou_threshold=o.iou_threshold,
                conf_threshold=o.nms_conf_threshold,
            )

        self._encode = jax.jit(encode)
        self._detect = jax.jit(detect)

    @classmethod
    def from_checkpoint(
        cls, path: str | pathlib.Path, options: PredictOptions = PredictOptions()
    ) -> Predictor:
        from jdet.trainer import make_model

        config, variables, desc = load_run(path)
        predictor = cls(
            make_model(config),
            variables,
            query_size=config.data.query_size,
            support_size=config.data.support_size,
            options=options,
        )
        predictor.description = desc
        return predictor

    # -- pieces ------------------------------------------------------------------------------

    def encode_references(self, photos: Sequence[np.ndarray]) -> dict[str, jax.Array]:
        """K reference photos ([h, w, 3] uint8 RGB) → prototypes {scale: [1, 1, d]} (cache these
        per video). Resized to support_size² as in training."""
        s = self.support_size
        support = np.stack([T.resize(p, T.as_boxes(None), s, s)[0] for p in photos])
        support = support.astype(np.float32)[None, None] / 255.0  # [1, 1, K, S, S, 3]
        return self._encode(self.variables, support)

    def detect_frames(
        self, frames: Sequence[np.ndarray], prototypes: dict[str, jax.Array]
    ) -> list[np.ndarray]:
        """Up to batch_size frames ([H, W, 3] uint8) → per frame [n, 5] f32 in frame pixels."""
        bsz, size = self.options.batch_size, self.query_size
        if not 0 < len(frames) <= bsz:
            raise ValueError(f"detect_frames takes 1..{bsz} frames, got {len(frames)}")
        query = np.zeros((bsz, size, size, 3), np.float32)  # fixed shape: one compilation
        for i, frame in enumerate(frames):
            query[i] = T.letterbox(frame, T.as_boxes(None), size)[0] / 255.0
        det = jax.device_get(self._detect(self.variables, query, prototypes))
        out = []
        for i, frame in enumerate(frames):
            keep = det.valid[i]
            boxes = unletterbox(det.boxes[i][keep], frame.shape[:2], size)
            out.append(np.concatenate([boxes, det.scores[i][keep, None]], 1).astype(np.float32))
        return out

    def predict_video(
        self,
        video_path: str | pathlib.Path,
        references: Sequence[np.ndarray],
        *,
        stride: int = 1,
        max_frames: int | None = None,
        on_frames: Callable[[int], None] | None = None,
    ) -> FrameDetections:
        """Every `stride`-th frame of a video (streamed) → {frame: [n, 5] detections}.

        references: the K reference photos ([h, w, 3] uint8 RGB); on_frames(n) is called after
        each batch with the number of frames done (progress bars).
        """
        prototypes = self.encode_references(references)
        stop = None if max_frames is None else max_frames * stride
        result: FrameDetections = {}
        pending: list[tuple[int, np.ndarray]] = []

        def flush():
            dets = self.detect_frames([f for _, f in pending], prototypes)
            result.update({i: d for (i, _), d in zip(pending, dets)})
            if on_frames is not None:
                on_frames(len(pending))
            pending.clear()

        for index, frame in video_io.iter_frames(video_path, stride=stride, stop=stop):
            pending.append((index, frame))
            if len(pending) == self.options.batch_size:
                flush()
        if pending:
            flush()
        return result


def load_samples(root: str | pathlib.Path) -> list[zalo.VideoRecord]:
    """The videos of a challenge-layout folder (annotations optional); DatasetError naming the
    file and field when the folder is unusable."""
    records, report = zalo.load_dataset(root, check_videos=False)
    report.raise_if_errors()
    return records


def predict_folder(
    predictor: Predictor,
    records: Iterable[zalo.VideoRecord],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict[str, FrameDetections]:
    """Every video of a folder → {video_id: {frame: [n, 5]}} (a tqdm bar over frames)."""
    from tqdm import tqdm

    records = list(records)
    total = sum(
        len(
            range(
                0,
                r.num_frames if max_frames is None else min(r.num_frames, max_frames * stride),
                stride,
            )
        )
        for r in records
    )
    out = {}
    with tqdm(total=total, unit="frame", desc="predict", disable=not progress) as bar:
        for record in records:
            bar.set_postfix(video=record.video_id)
            photos = [zalo.load_reference(p) for p in record.reference_paths]
            out[record.video_id] = predictor.predict_video(
                record.video_path,
                photos,
                stride=stride,
                max_frames=max_frames,
                on_frames=bar.update,
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from jdet.data.report import DatasetError
    from jdet.evaluate import submission_from_detections
    from jdet.submission import write_submission

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
    args = parser.parse_args(argv)
    if args.stride < 1 or args.batch_size < 1 or not 0.0 <= args.conf <= 1.0:
        parser.error("--stride and --batch-size must be >= 1 and --conf in [0, 1]")
    options = PredictOptions(
        conf_threshold=args.conf, iou_threshold=args.iou, batch_size=args.batch_size
    )
    try:
        records = load_samples(args.samples)
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
