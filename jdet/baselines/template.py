"""Training-free baselines for the challenge: multi-scale template matching, full-frame, empty.

Writes the challenge's submission JSON (docs/original.md §1, `jdet.submission`), the same format
as the learned detector, so that jdet can be compared with something that needs no training.

Methods (``--method``):

- ``template`` (default). Per video:
  1. Each reference photo is cropped to its object: the background colour is the median of a
     border strip (6 % of the short side); pixels whose RGB distance to it exceeds
     max(40, 3 × the border's own 90th-percentile distance) are foreground; after a 3×3
     opening, the largest foreground component (holes filled) is the object mask and its
     bounding box the crop (a soft shadow next to the object may be included). When that
     component covers < 1 % or > 90 % of the photo, the central 60 % of the photo with a full
     mask is used instead. ``--no-crop`` uses the whole photo.
  2. A pyramid of templates: each crop is rotated by every angle of ``--angles`` (default
     0, 90, 180, 270; the canvas grows to fit, the mask rotates along) and resized so that its
     long side is each fraction of ``--scales`` of the working frame's short side (default 8
     sizes, geometric from 4 % to 40 %; long sides below 10 px are raised to 10 px, since
     smaller templates match noise, and duplicates dropped). A template with a long side
     L >= 32 px is matched on the frame halved k = floor(log2(L / 16)) times (its long side
     there is 16-31 px), which bounds the cost of large templates.
  3. Each frame (streamed with `jdet.data.video.iter_frames`, one frame in memory; first
     downscaled so that its long side is at most ``--max-side``, default 640) is matched
     against every template. Score map per template: ``cv2.matchTemplate(frame, template,
     cv2.TM_CCOEFF_NORMED, mask=object mask)`` on the RGB channels, minus ``--color-weight``
     (default 5) × the L1 distance between the chromaticities r,g,b/(r+g+b) of the template's
     and of the window's masked mean colours. (NCC subtracts each channel's mean, so alone it
     ignores colour and small templates match any blob: on the synthetic set below plain NCC,
     ``--color-weight 0`` with its own tuned threshold 0.675, scores 0.077.) The best score
     over references × angles × scales × positions wins; its box is the bounding box of the
     template's mask there, scaled back to the video's pixels.
  4. A box is written when that score is >= ``--threshold`` (default -0.45; the score is at
     most 1 and negative when the colours differ). With ``--stride k`` only every k-th frame
     is matched and its box (or its absence) is repeated on the k-1 frames after it.

- ``full-frame``: the box (0, 0, W, H) on every frame (frame count from the video header).
- ``empty``: no box anywhere (every video present with ``"detections": []``).

Default threshold: swept from -1.0 to 0.5 in steps of 0.025 on a synthetic *tuning* set
(``python -m jdet.data.synthetic --out TUNE --num-videos 4 --seed 200 --frames 40
--size 160x96``); mean ST-IoU is flat at its maximum (0.303) for thresholds -0.675 … -0.2
(lower thresholds box the absent frames too, higher ones drop true frames); -0.45 is the
middle of that plateau. The scores below are on a different set (seed 100), never used for
tuning.

Measured on ``python -m jdet.data.synthetic --out EVAL --num-videos 4 --seed 100 --frames 40
--size 160x96`` (160 frames, 160×96), ST-IoU (docs/losses.md §8, `jdet.evaluation.st_iou`)
against EVAL/annotations/annotations.json; OpenCV 5.0.0, 2 shared CPU cores:

    method                         mean ST-IoU  synth_000  synth_001  synth_002  synth_003
    template (defaults)                  0.370      0.663      0.142      0.118      0.556
    template --color-weight 0
      --threshold 0.675 (plain NCC)      0.077      0.226      0.011      0.024      0.048
    full-frame                           0.008      0.007      0.011      0.005      0.007
    empty                                0.000      0.000      0.000      0.000      0.000

Runtime of ``template`` with the defaults (3 references × 4 angles × 8 scales = 96
templates): 5-9 frames/s at 160×96 (varies with the load of the shared cores; decoding
included), about 0.4 frames/s at 640×384. It is roughly proportional to the frame area, so
for long full-HD videos use ``--stride`` (e.g. 5) and/or a smaller ``--max-side``.

Commands::

    python -m jdet.baselines.template --samples ROOT --out submission.json
    python -m jdet.baselines.template --samples ROOT --out sub.json --method full-frame
    python -m jdet.baselines.template --samples ROOT --out sub.json --stride 5 \\
        --scales 0.05 0.1 0.2 --threshold -0.3 --max-frames 500

Python API: ``predict_video(video_path, reference_paths, **options) -> {frame: (x1, y1, x2,
y2)}``, ``score_video`` (the best score and box of every matched frame, for threshold sweeps),
``build_templates`` / ``match_frame`` (one frame), ``main(argv) -> exit code``.
Errors (missing samples folder, video or reference photos, unreadable files) print one line
naming the path and exit with code 2.

Needs OpenCV: ``pip install opencv-python-headless`` (the ``baseline`` extra of jdet).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

try:
    import cv2
except ImportError:  # reported by main() as a one-line error
    cv2 = None

from jdet.data import video as video_io
from jdet.data import zalo
from jdet.submission import write_submission

Box = tuple[float, float, float, float]

METHODS = ("template", "full-frame", "empty")
DEFAULT_SCALES = tuple(float(v) for v in np.geomspace(0.04, 0.40, 8).round(4))
DEFAULT_ANGLES = (0.0, 90.0, 180.0, 270.0)
DEFAULT_THRESHOLD = -0.45
DEFAULT_MAX_SIDE = 640
MIN_TEMPLATE_SIDE = 10
MATCH_SIDE = 16
DEFAULT_COLOR_WEIGHT = 5.0


class BaselineError(Exception):
    """A problem with the input (missing folder/file, unreadable video); one-line message."""


# ----------------------------------------------------------------------------- references


def crop_reference(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, Box]:
    """Crop a reference photo to its object by the difference from the border colour.

    photo: [H, W, 3] uint8 RGB. Returns (crop [h, w, 3] uint8, mask [h, w] uint8 in {0, 255},
    box (x1, y1, x2, y2) of the crop in the photo). See the module docstring for the rule.
    """
    height, width = photo.shape[:2]
    rgb = photo.astype(np.float32)
    band = max(round(0.06 * min(height, width)), 1)
    border = np.concatenate(
        [
            rgb[:band].reshape(-1, 3),
            rgb[-band:].reshape(-1, 3),
            rgb[:, :band].reshape(-1, 3),
            rgb[:, -band:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    spread = np.percentile(np.linalg.norm(border - background, axis=1), 90)
    distance = np.linalg.norm(rgb - background, axis=2)
    foreground = (distance > max(40.0, 3.0 * spread)).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = stats[largest, cv2.CC_STAT_AREA]
    else:
        largest, area = 0, 0
    if not 0.01 * height * width <= area <= 0.9 * height * width:
        x1, y1 = int(0.2 * width), int(0.2 * height)
        x2, y2 = max(int(0.8 * width), x1 + 1), max(int(0.8 * height), y1 + 1)
        crop = photo[y1:y2, x1:x2]
        return crop.copy(), np.full(crop.shape[:2], 255, np.uint8), (x1, y1, x2, y2)
    x, y = stats[largest, cv2.CC_STAT_LEFT], stats[largest, cv2.CC_STAT_TOP]
    w, h = stats[largest, cv2.CC_STAT_WIDTH], stats[largest, cv2.CC_STAT_HEIGHT]
    mask = (labels[y : y + h, x : x + w] == largest).astype(np.uint8) * 255
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(mask, contours, -1, 255, thickness=cv2.FILLED)  # fill holes
    return photo[y : y + h, x : x + w].copy(), mask, (int(x), int(y), int(x + w), int(y + h))


def _rotate(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image and mask by `angle` degrees (counter-clockwise), growing the canvas."""
    angle = float(angle) % 360.0
    if angle == 0.0:
        return image, mask
    for quarter, code in (
        (90.0, cv2.ROTATE_90_COUNTERCLOCKWISE),
        (180.0, cv2.ROTATE_180),
        (270.0, cv2.ROTATE_90_CLOCKWISE),
    ):
        if angle == quarter:
            return cv2.rotate(image, code), cv2.rotate(mask, code)
    h, w = mask.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    matrix[0, 2] += new_w / 2 - w / 2
    matrix[1, 2] += new_h / 2 - h / 2
    image = cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, matrix, (new_w, new_h), flags=cv2.INTER_NEAREST)
    return image, mask


@dataclasses.dataclass(frozen=True)
class Template:
    """One matching template. image [h, w, 3] float32 RGB; mask [h, w] uint8 {0, 255}; box:
    (x1, y1, x2, y2) of the mask's pixels inside the template; reference, angle, scale: where
    it came from; level: it is matched on the frame downscaled by 2**level (its sizes are at
    that level)."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    reference: int
    angle: float
    scale: float
    level: int = 0


def build_templates(
    references: Sequence[np.ndarray],
    frame_short_side: int,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    angles: Sequence[float] = DEFAULT_ANGLES,
    crop: bool = True,
) -> list[Template]:
    """Templates for every reference × angle × scale.

    references: [H, W, 3] uint8 RGB photos; frame_short_side: the short side (pixels) of the
    frames the templates will be matched against; scales: template long side as a fraction of
    it. crop: crop each photo to its object (`crop_reference`); False uses the whole photo.
    A template whose long side L is >= 2·MATCH_SIDE is made for pyramid level k = floor(log2(
    L / MATCH_SIDE)) (the frame halved k times), so its long side there is in [MATCH_SIDE,
    2·MATCH_SIDE): large templates are matched coarsely, which bounds the cost per template.
    """
    templates: list[Template] = []
    for k, photo in enumerate(references):
        if crop:
            image, mask, _ = crop_reference(photo)
        else:
            image, mask = photo, np.full(photo.shape[:2], 255, np.uint8)
        for angle in angles:
            rotated, rotated_mask = _rotate(image, mask, angle)
            h, w = rotated_mask.shape
            seen: set[tuple[tuple[int, int], int]] = set()
            for scale in scales:
                side = max(scale * frame_short_side, MIN_TEMPLATE_SIDE)
                level = max(int(np.floor(np.log2(side / MATCH_SIDE))), 0)
                factor = side / 2**level / max(h, w)
                size = (max(round(w * factor), 2), max(round(h * factor), 2))
                if (size, level) in seen:
                    continue
                seen.add((size, level))
                interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
                small = cv2.resize(rotated, size, interpolation=interpolation)
                small_mask = cv2.resize(rotated_mask, size, interpolation=cv2.INTER_NEAREST)
                ys, xs = np.nonzero(small_mask)
                if len(xs) < 4:
                    continue
                box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                templates.append(
                    Template(
                        small.astype(np.float32),
                        small_mask,
                        box,
                        k,
                        float(angle),
                        float(scale),
                        level,
                    )
                )
    return templates


# ----------------------------------------------------------------------------- matching


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(r, g, b) / (r + g + b) along the last axis, with +1 so that black is defined."""
    rgb = rgb + 1.0
    return rgb / rgb.sum(axis=-1, keepdims=True)


def match_frame(
    frame: np.ndarray, templates: Sequence[Template], *, color_weight: float = DEFAULT_COLOR_WEIGHT
) -> tuple[float, Box | None]:
    """Best (score, box) of `templates` on one frame; (-inf, None) when none fits.

    frame: [H, W, 3] uint8 or float32 RGB, at the size the templates were built for.
    Score map per template: ``TM_CCOEFF_NORMED`` (masked, RGB) minus ``color_weight`` × the L1
    distance between the chromaticities of the template's and the window's masked mean colours
    (NCC subtracts each channel's mean, so without this term colour is ignored). The box is
    the template mask's bounding box at the best location, in the frame's pixels.
    """
    height, width = frame.shape[:2]
    pyramid: dict[int, tuple[np.ndarray, list[np.ndarray], float, float]] = {}
    best_score, best_box = -np.inf, None
    for template in templates:
        if template.level not in pyramid:
            size = (
                max(round(width / 2**template.level), 1),
                max(round(height / 2**template.level), 1),
            )
            level_image = (
                frame
                if template.level == 0
                else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            )
            level_image = level_image.astype(np.float32, copy=False)
            channels = (
                [np.ascontiguousarray(level_image[..., c]) for c in range(3)]
                if color_weight
                else []
            )
            pyramid[template.level] = (level_image, channels, width / size[0], height / size[1])
        image, channels, sx, sy = pyramid[template.level]
        h, w = template.mask.shape
        if h > image.shape[0] or w > image.shape[1]:
            continue
        scores = cv2.matchTemplate(image, template.image, cv2.TM_CCOEFF_NORMED, mask=template.mask)
        scores = np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0)
        if color_weight:
            weights = (template.mask > 0).astype(np.float32)
            means = (
                np.stack([cv2.matchTemplate(c, weights, cv2.TM_CCORR) for c in channels], axis=-1)
                / weights.sum()
            )
            reference = _chromaticity(template.image[template.mask > 0].mean(axis=0))
            scores -= color_weight * np.abs(_chromaticity(means) - reference).sum(axis=-1)
        index = int(np.argmax(scores))
        score = float(scores.flat[index])
        if score > best_score:
            y, x = divmod(index, scores.shape[1])
            x1, y1, x2, y2 = template.box
            best_score, best_box = (
                score,
                (
                    float((x + x1) * sx),
                    float((y + y1) * sy),
                    float((x + x2) * sx),
                    float((y + y2) * sy),
                ),
            )
    return best_score, best_box


def _working_size(height: int, width: int, max_side: int | None) -> tuple[float, int, int]:
    """(factor, height, width) of the frame after downscaling its long side to <= max_side."""
    factor = (
        1.0 if not max_side or max(height, width) <= max_side else max_side / max(height, width)
    )
    return factor, max(round(height * factor), 1), max(round(width * factor), 1)


def score_video(
    video_path: str | pathlib.Path,
    reference_paths: Sequence[str | pathlib.Path],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    angles: Sequence[float] = DEFAULT_ANGLES,
    max_side: int | None = DEFAULT_MAX_SIDE,
    crop: bool = True,
    color_weight: float = DEFAULT_COLOR_WEIGHT,
) -> Iterator[tuple[int, float, Box | None]]:
    """Yield (frame, best score, box in video pixels) for every matched frame.

    Frames 0, stride, 2·stride, … below max_frames are decoded one at a time. Raises
    VideoError / ReferenceImageError naming the file.
    """
    references = [zalo.load_reference(p) for p in reference_paths]
    templates: list[Template] | None = None
    factor = 1.0
    for index, frame in video_io.iter_frames(video_path, stride=stride, stop=max_frames):
        if templates is None:
            factor, h, w = _working_size(*frame.shape[:2], max_side)
            templates = build_templates(
                references, min(h, w), scales=scales, angles=angles, crop=crop
            )
        if factor != 1.0:
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        score, box = match_frame(frame, templates, color_weight=color_weight)
        if box is not None and factor != 1.0:
            box = tuple(v / factor for v in box)  # type: ignore[assignment]
        yield index, score, box


def _fill_stride(boxes: dict[int, Box], stride: int, num_frames: int) -> dict[int, Box]:
    """Repeat each matched frame's box on the stride-1 frames after it (below num_frames)."""
    if stride == 1:
        return boxes
    out: dict[int, Box] = {}
    for frame, box in boxes.items():
        for f in range(frame, min(frame + stride, num_frames)):
            out[f] = box
    return out


def _predict(
    video_path: str | pathlib.Path,
    reference_paths: Sequence[str | pathlib.Path],
    threshold: float,
    stride: int,
    max_frames: int | None,
    options: dict,
) -> tuple[dict[int, Box], int]:
    """(boxes as in `predict_video`, number of frames matched)."""
    boxes: dict[int, Box] = {}
    matched = 0
    for frame, score, box in score_video(
        video_path, reference_paths, stride=stride, max_frames=max_frames, **options
    ):
        matched += 1
        if box is not None and score >= threshold:
            boxes[frame] = box
    if stride > 1:
        num_frames = video_io.video_info(video_path).num_frames
        if max_frames is not None:
            num_frames = min(num_frames, max_frames)
        boxes = _fill_stride(boxes, stride, num_frames)
    return boxes, matched


def predict_video(
    video_path: str | pathlib.Path,
    reference_paths: Sequence[str | pathlib.Path],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    stride: int = 1,
    max_frames: int | None = None,
    **options,
) -> dict[int, Box]:
    """{frame: (x1, y1, x2, y2)} video pixels, for the frames whose best score >= threshold.

    options: scales, angles, max_side, crop, color_weight (see `score_video`). With stride > 1
    each matched frame's box is repeated on the frames up to the next matched one.
    """
    return _predict(video_path, reference_paths, threshold, stride, max_frames, options)[0]


def full_frame_video(
    video_path: str | pathlib.Path, max_frames: int | None = None
) -> dict[int, Box]:
    """The box (0, 0, W, H) on every frame of the video (frame count from its header)."""
    info = video_io.video_info(video_path)
    count = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
    return {f: (0.0, 0.0, float(info.width), float(info.height)) for f in range(count)}


# ----------------------------------------------------------------------------- CLI


def list_videos(root: str | pathlib.Path) -> list[tuple[str, pathlib.Path, list[pathlib.Path]]]:
    """(video_id, video path, reference paths) of every sample folder under root/samples.

    Raises BaselineError naming the missing path.
    """
    samples = pathlib.Path(root) / zalo.SAMPLES_DIR
    if not samples.is_dir():
        raise BaselineError(
            f"{samples}: samples folder not found (expected "
            "<root>/samples/<video_id>/drone_video.mp4)"
        )
    folders = sorted(p for p in samples.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BaselineError(f"{samples}: no sample folders")
    videos = []
    for folder in folders:
        video = folder / zalo.VIDEO_FILE
        if not video.is_file():
            raise BaselineError(f"{video}: video not found")
        refs_dir = folder / zalo.REFERENCES_DIR
        jpgs, extras = zalo.find_references(refs_dir) if refs_dir.is_dir() else ([], [])
        if not jpgs + extras:
            raise BaselineError(f"{refs_dir}: no reference photos (img_1.jpg, ...)")
        videos.append((folder.name, video, jpgs + extras))
    return videos


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jdet.baselines.template", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--samples",
        required=True,
        metavar="ROOT",
        help="challenge split: ROOT/samples/<video_id>/drone_video.mp4",
    )
    parser.add_argument("--out", required=True, help="submission JSON to write")
    parser.add_argument("--method", choices=METHODS, default="template")
    parser.add_argument("--stride", type=int, default=1, help="match every k-th frame")
    parser.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_SCALES),
        help="template long side / frame short side (default: 8 from 0.04 to 0.4)",
    )
    parser.add_argument(
        "--angles",
        type=float,
        nargs="+",
        default=list(DEFAULT_ANGLES),
        help="template rotations in degrees (default: 0 90 180 270)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="minimum score (TM_CCOEFF_NORMED minus the colour term, <= 1) for a box",
    )
    parser.add_argument(
        "--color-weight",
        type=float,
        default=DEFAULT_COLOR_WEIGHT,
        help="weight of the chromaticity term (0: plain TM_CCOEFF_NORMED)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help="downscale frames so their long side is at most this (0: never)",
    )
    parser.add_argument(
        "--no-crop",
        action="store_true",
        help="use whole reference photos instead of cropping to the object",
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="only the first N frames of each video"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI (see the module docstring); returns the exit code (2 on input errors)."""
    args = _parser().parse_args(argv)
    if args.stride < 1 or (args.max_frames is not None and args.max_frames < 1):
        print("error: --stride and --max-frames must be >= 1", file=sys.stderr)
        return 2
    if args.method == "template" and cv2 is None:
        print(
            "error: the template method needs OpenCV: pip install opencv-python-headless",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    tracks: dict[str, dict[int, Box]] = {}
    frames = 0
    try:
        videos = list_videos(args.samples)
        for video_id, video, references in tqdm(
            videos, desc=args.method, unit="video", file=sys.stderr
        ):
            if args.method == "empty":
                video_io.video_info(video)  # still fail on unreadable videos
                tracks[video_id] = {}
            elif args.method == "full-frame":
                tracks[video_id] = full_frame_video(video, args.max_frames)
            else:
                options = {
                    "scales": args.scales,
                    "angles": args.angles,
                    "max_side": args.max_side,
                    "crop": not args.no_crop,
                    "color_weight": args.color_weight,
                }
                tracks[video_id], matched = _predict(
                    video, references, args.threshold, args.stride, args.max_frames, options
                )
                frames += matched
    except (BaselineError, video_io.VideoError, zalo.ReferenceImageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_submission(args.out, tracks, [v[0] for v in videos])
    seconds = time.perf_counter() - start
    rate = f", {frames / seconds:.1f} frames/s" if frames else ""
    print(
        f"wrote {path}: {len(tracks)} videos, {sum(map(len, tracks.values()))} boxes "
        f"({args.method}) in {seconds:.1f} s{rate}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
