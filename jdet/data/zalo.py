"""Read and validate a Zalo AI Challenge 2025 split (docs/original.md §1).

Layout, exactly as the original reads it::

    <root>/samples/<video_id>/drone_video.mp4
    <root>/samples/<video_id>/object_images/img_1.jpg, img_2.jpg, ...
    <root>/annotations/annotations.json

`load_dataset` returns one `VideoRecord` per usable video plus a `Report` of every problem
found (it never stops at the first). Decisions:

- A sample folder without an entry in annotations.json, or with empty ``annotations``, is a
  valid negative video (the object never appears). A split without annotations.json (the
  challenge's test split) loads with a warning and every video negative.
- Reference photos are all ``*.jpg`` (case-insensitive) in ``object_images/``, in natural
  order (img_2 before img_10). ``.jpeg``/``.png`` are accepted with a warning, since the
  original only globbed ``*.jpg``. Grayscale, RGBA, CMYK and palette photos are converted to
  RGB (`load_reference`).
- Every sample needs ``min_references`` photos (default 3, as in the challenge):
  ``img_1`` .. ``img_<min_references>`` (any accepted extension) must all exist, and each
  missing one is an error naming it (``.../object_images/img_2.jpg: missing``). Pass a
  smaller ``min_references`` (K-shot experiments, ``--min-references``) to accept fewer. A gap
  above that range (img_1..img_3 and img_5 but no img_4) is a warning. Folders whose photos
  are not named ``img_<k>`` are only checked to hold at least ``min_references`` photos.
- Videos with a missing/corrupt mp4 or without a readable reference photo are left out of the
  records (error). Bad boxes are dropped (error), the rest of their video is kept.

CLI: ``python -m jdet.data.zalo validate ROOT [--no-video-check] [--min-references K]`` prints
the report and exits 1 on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from jdet.data import video as video_io
from jdet.data.annotations import check_boxes, parse_annotations
from jdet.data.report import DatasetError, Report
from jdet.submission import Box

__all__ = [
    "DatasetError",
    "ReferenceImageError",
    "Report",
    "VideoRecord",
    "find_references",
    "load_dataset",
    "load_reference",
    "main",
]

SAMPLES_DIR = "samples"
VIDEO_FILE = "drone_video.mp4"
REFERENCES_DIR = "object_images"
ANNOTATIONS_FILE = "annotations/annotations.json"
_EXTRA_SUFFIXES = (".jpeg", ".png")  # accepted with a warning; the original reads *.jpg only
_NUMBERED = re.compile(r"img_(\d+)", re.IGNORECASE)  # the challenge's names: img_1, img_2, ...
MIN_REFERENCES = 3  # reference photos per sample in the challenge data
_BACKGROUND = (255, 255, 255)  # transparent reference pixels are composited on white


class ReferenceImageError(ValueError):
    """A reference photo is missing or cannot be decoded.

    ``str(error)`` is "<path>: <reason>"; `path` and `reason` are attributes.
    """

    def __init__(self, path: str | pathlib.Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One usable video of a split.

    boxes: {frame number: (x1, y1, x2, y2)} float pixel corners, sorted by frame, clipped to
    the frame; frames not in it are background. The class id of a video in episodic training
    is its index in the records list (sorted by video_id).
    """

    video_id: str
    video_path: pathlib.Path
    reference_paths: tuple[pathlib.Path, ...]
    boxes: dict[int, Box]
    num_frames: int
    height: int
    width: int
    fps: float

    @property
    def is_negative(self) -> bool:
        """True when the object never appears (no box in any frame)."""
        return not self.boxes

    def box_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames [N] int64, boxes [N, 4] float32 xyxy pixels); N = 0 gives empty arrays."""
        frames = np.fromiter(self.boxes.keys(), np.int64, len(self.boxes))
        boxes = np.asarray(list(self.boxes.values()), np.float32).reshape(-1, 4)
        return frames, boxes


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → [H, W, 3] uint8 RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit/float grayscale
        gray = np.asarray(image, np.float64)
        if image.mode != "F" and gray.max(initial=0) > 255:
            gray = gray * (255.0 / 65535.0)
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), np.uint8)


def load_reference(path: str | pathlib.Path) -> np.ndarray:
    """A reference photo as [H, W, 3] uint8 RGB.

    EXIF orientation is applied (phone photos); grayscale, 16-bit, CMYK, palette and images
    with alpha are converted (alpha over white). Raises ReferenceImageError naming the file
    when it is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except FileNotFoundError as e:
        raise ReferenceImageError(path, "reference photo not found") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ReferenceImageError(path, f"cannot read the reference photo ({e}); replace "
                                  "it with a valid JPEG or PNG") from e


def _natural_key(path: pathlib.Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower())]


def find_references(folder: pathlib.Path) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(jpgs, extras): ``*.jpg`` files and accepted ``.jpeg``/``.png`` files, natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    jpgs = [p for p in files if p.suffix.lower() == ".jpg"]
    extras = [p for p in files if p.suffix.lower() in _EXTRA_SUFFIXES]
    return sorted(jpgs, key=_natural_key), sorted(extras, key=_natural_key)


def _check_numbering(paths: Sequence[pathlib.Path], name: str, min_references: int,
                     report: Report) -> None:
    """Report missing photos among img_1..img_<min_references> (errors) and gaps above
    (warnings); count-only when no photo is named img_<k>."""
    found = ", ".join(p.name for p in paths)
    numbers = {int(m.group(1)) for p in paths if (m := _NUMBERED.fullmatch(p.stem))}
    hint = (f"every sample needs at least {min_references} reference photos "
            f"(img_1.jpg..img_{min_references}.jpg); found {found}. Add (or rename) the photo, "
            "or lower min_references (--min-references) to accept fewer")
    if not numbers:
        if len(paths) < min_references:
            report.error(f"{name}: {len(paths)} reference photo(s); {hint}")
        return
    for k in range(1, min_references + 1):
        if k not in numbers:
            report.error(f"{name}/img_{k}.jpg: missing; {hint}")
    gaps = [f"img_{k}.jpg" for k in range(min_references + 1, max(numbers)) if k not in numbers]
    if gaps:
        report.warn(f"{name}: {', '.join(gaps)} missing, a gap in the numbering (found "
                    f"{found}); check that no photo was lost")


def _references(folder: pathlib.Path, name: str, report: Report,
                min_references: int = MIN_REFERENCES) -> list[pathlib.Path]:
    """Readable reference photos of one sample; problems go to the report."""
    if not folder.is_dir():
        report.error(f"{name}: folder missing; every sample needs its reference photos "
                     "(object_images/img_1.jpg, ...)")
        return []
    jpgs, extras = find_references(folder)
    if extras:
        report.warn(f"{name}: {', '.join(p.name for p in extras)} accepted, but the original "
                    "only reads *.jpg; convert them for full compatibility")
    paths = sorted(jpgs + extras, key=_natural_key)
    if not paths:
        report.error(f"{name}: no reference photos (*.jpg) found")
        return []
    _check_numbering(paths, name, min_references, report)
    readable = []
    for path in paths:
        try:
            load_reference(path)
        except ReferenceImageError as e:
            report.error(f"{name}/{path.name}: {e.reason}")
            continue
        readable.append(path)
    return readable


def load_dataset(root: str | pathlib.Path, *, check_videos: bool = True,
                 min_references: int = MIN_REFERENCES) -> tuple[list[VideoRecord], Report]:
    """Read and validate a split → (records sorted by video_id, report).

    check_videos: decode the first and last frame of each video and count its packets (catches
    truncated files; reads every mp4 once). False reads only the mp4 headers (frame count,
    size), which is enough for the frame-range and clipping checks.
    min_references: reference photos each sample must have (img_1..img_<min_references>);
    each missing one is an error naming the file. Lower it to accept fewer (K-shot). A video
    with fewer photos is still returned (with the error), like one with an unreadable photo.
    Never raises on bad content: see `report.ok` / `report.raise_if_errors()`.
    ValueError when min_references < 1.
    """
    if isinstance(min_references, bool) or not isinstance(min_references, int) \
            or min_references < 1:
        raise ValueError(f"min_references must be an integer >= 1, got {min_references!r}")
    root = pathlib.Path(root)
    report = Report(root=str(root.absolute()), videos_checked=check_videos)
    samples = root / SAMPLES_DIR
    if not samples.is_dir():
        report.error(f"{SAMPLES_DIR}/: folder missing under {root}; expected "
                     "<root>/samples/<video_id>/drone_video.mp4 and "
                     "<root>/annotations/annotations.json")
        return [], report
    folders = sorted(p for p in samples.iterdir() if p.is_dir() and not p.name.startswith("."))
    report.num_sample_folders = len(folders)
    if not folders:
        report.error(f"{SAMPLES_DIR}/: no sample folders")

    annotations_path = root / ANNOTATIONS_FILE
    raw_boxes: dict = {}
    if annotations_path.is_file():
        raw_boxes = parse_annotations(annotations_path, ANNOTATIONS_FILE, report) or {}
    else:
        report.warn(f"{ANNOTATIONS_FILE}: missing; every video is treated as unlabelled "
                    "(negative). Fine for a test split, wrong for training")
    folder_ids = {f.name for f in folders}
    for video_id in raw_boxes:
        if video_id not in folder_ids:
            report.error(f"{ANNOTATIONS_FILE}: video '{video_id}' has no folder "
                         f"{SAMPLES_DIR}/{video_id}/; fix the id or add the sample")

    records = []
    for folder in folders:
        record = _load_sample(folder, raw_boxes.get(folder.name, []), check_videos,
                              min_references, report)
        if record is not None:
            records.append(record)
    report.num_videos = len(records)
    report.num_frames = sum(r.num_frames for r in records)
    report.num_annotated_frames = sum(len(r.boxes) for r in records)
    report.num_boxes = sum(len(b) for b in raw_boxes.values())
    report.num_negative_videos = sum(r.is_negative for r in records)
    report.num_references = sum(len(r.reference_paths) for r in records)
    return records, report


def _load_sample(folder: pathlib.Path, raw_boxes: list, check_videos: bool,
                 min_references: int, report: Report) -> VideoRecord | None:
    """The record of one sample folder, or None (with errors reported) if it is unusable."""
    name = f"{SAMPLES_DIR}/{folder.name}"
    video_path = folder / VIDEO_FILE
    info = None
    if not video_path.is_file():
        report.error(f"{name}/{VIDEO_FILE}: missing; every sample folder needs its video")
    else:
        try:
            info = (video_io.check_video if check_videos else video_io.video_info)(video_path)
        except video_io.VideoError as e:
            report.error(f"{name}/{VIDEO_FILE}: {e.reason}")
    references = _references(folder / REFERENCES_DIR, f"{name}/{REFERENCES_DIR}", report,
                             min_references)
    if info is None:
        if raw_boxes:
            report.warn(f"{name}: its {len(raw_boxes)} boxes are not checked because the "
                        "video is unusable")
        return None
    boxes = check_boxes(folder.name, raw_boxes, info.num_frames, info.height, info.width,
                        ANNOTATIONS_FILE, report)
    if not references:
        return None
    return VideoRecord(video_id=folder.name, video_path=video_path,
                       reference_paths=tuple(references), boxes=boxes,
                       num_frames=info.num_frames, height=info.height, width=info.width,
                       fps=info.fps)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 when the dataset has errors)."""
    parser = argparse.ArgumentParser(prog="python -m jdet.data.zalo",
                                     description="Zalo AI Challenge 2025 dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check a split and print a report")
    validate.add_argument("root", help="split folder holding samples/ and annotations/")
    validate.add_argument("--no-video-check", action="store_true",
                          help="read only the mp4 headers; do not decode (faster)")
    validate.add_argument("--min-references", type=int, default=MIN_REFERENCES, metavar="K",
                          help="reference photos each sample must have (img_1..img_K); "
                          f"default {MIN_REFERENCES}, lower it for K-shot data")
    validate.add_argument("--max-items", type=int, default=25,
                          help="list at most this many errors and warnings each")
    args = parser.parse_args(argv)
    if args.min_references < 1:
        parser.error(f"--min-references must be >= 1, got {args.min_references}")
    _, report = load_dataset(args.root, check_videos=not args.no_video_check,
                             min_references=args.min_references)
    print(report.format(max_items=args.max_items))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
