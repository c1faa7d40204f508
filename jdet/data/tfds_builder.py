"""TFDS dataset of the challenge layout: decoded frames and reference photos in ArrayRecord.

Built and read without TensorFlow (docs/design.md §6): ``file_format="array_record"``, images fed
as encoded JPEG bytes, read back with ``as_data_source`` (random access, for grain) by
`jdet.data.tfds_source` (``load_split``, ``load_metadata``; re-exported here).

Layout under ``data_dir`` (one builder, two configs, the same splits in both)::

    zalo_ref_det/frames/<VERSION>/      one example per kept video frame
    zalo_ref_det/references/<VERSION>/  one example per reference photo

- ``frames`` features: ``image`` JPEG [H, W, 3] uint8; ``boxes`` [n, 4] f32 xyxy pixels of the
  frame (n = 0 on background frames, 1 in this challenge, any n supported); ``video_id``;
  ``class_id`` (index of the video in the sorted list of all videos of the source, i.e. the
  original's class id); ``frame_index`` (decoder order, as in annotations.json); ``height``,
  ``width``. ``frame_stride`` s keeps frames 0, s, 2s, ... of every video (annotated frames
  in between are left out); ``jpeg_quality`` (default 90) sets the frame encoding.
- ``references`` features (one example per photo, a video's photos consecutive, natural
  order): ``image`` (the photo's own JPEG bytes when it is a plain RGB JPEG, else re-encoded
  after `zalo.load_reference`); ``video_id``; ``class_id``; ``reference_index``; ``file_name``.
- Splits ``train`` and ``val`` hold disjoint videos: ``split_videos`` shuffles the sorted ids
  with ``seed`` and sends ``round(val_fraction · V)`` of them to ``val`` (at least one when
  val_fraction > 0 and V > 1). A split with no video is not created.
- Records keep generation order (``disable_shuffling``: videos sorted by id, frames in
  order), so each config's ``info.metadata`` can index them without reading images:
  ``metadata["splits"][split]`` lists per video ``{video_id, class_id, start, count,
  positives}`` (the video's records are ``start .. start+count``; frames add ``positives``,
  half-open ``[a, b)`` runs of record offsets that carry a box) and
  ``metadata["build"]`` the options the data was built with. The episode loader reads this
  index and re-checks the video id and box presence of every record it loads.

Interrupted builds: TFDS generates into ``<config>/incomplete.XXXX_<version>/`` and renames it
to ``<config>/<version>/`` only after every split and ``dataset_info.json`` are written (and
deletes the temporary folder on an exception), so a crash never leaves a version folder that
reads as complete; ``load_split`` raises ``DatasetNotBuiltError`` until a build succeeds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jdet.data import video as video_io
from jdet.data import zalo
from jdet.data.jpeg_encode import encoded_frames, reference_bytes
from jdet.data.report import DatasetError, Report
from jdet.data.tfds_source import (
    CONFIGS,
    FRAMES,
    NAME,
    REFERENCES,
    VERSION,
    dataset_path,
    load_metadata,
)

log = logging.getLogger(__name__)

# Keys set the record order under disable_shuffling. TFDS spills to 1000 on-disk buckets by
# the key's top bits once a split passes 1 GB, so keys are spread over the 128-bit key space:
# 2**22 (4.2M) records per split at most, ~4k records per bucket.
_KEY_BITS = 22
_KEY_SHIFT = 128 - _KEY_BITS


def split_videos(video_ids: Sequence[str], val_fraction: float, seed: int) -> dict[str, list]:
    """Deterministic video-level split -> {"train": ids, "val": ids}, each sorted.

    The sorted ids are permuted by ``np.random.default_rng(seed)``; the first
    ``round(val_fraction · V)`` (at least 1 if val_fraction > 0 and V > 1, at most V - 1) go
    to val. The same (ids, val_fraction, seed) always give the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(video_ids)
    num_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) > 1:
        num_val = min(max(num_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:num_val])
    return {"train": sorted(set(ids) - set(val)), "val": val}


def _runs(flags: Sequence[bool]) -> list[list[int]]:
    """[True, True, False, True] -> [[0, 2], [3, 4]]: half-open runs of True offsets."""
    runs, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append([start, i])
            start = None
    return runs


class ZaloRefDet(tfds.core.GeneratorBasedBuilder):
    """Zalo AI Challenge 2025 videos as frames + reference photos (see module docstring).

    Building needs ``src`` (a split folder in the challenge layout); reading needs nothing but
    ``data_dir``. Use `build_dataset` / `load_split` rather than this class directly.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Frames (JPEG, xyxy pixel boxes) and reference photos; video-level "
        "train/val split; record index in metadata.json.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=FRAMES, description="one example per video frame"),
        tfds.core.BuilderConfig(name=REFERENCES, description="one example per reference photo"),
    ]

    # TFDS 4.9.10 finds a builder's source file through `importlib_resources`, a package it
    # only requires on Python < 3.9 (ModuleNotFoundError on 3.11 without it). It is this file.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        src: str | os.PathLike | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        frame_stride: int = 1,
        jpeg_quality: int = 90,
        records: Sequence[zalo.VideoRecord] | None = None,
        encode_threads: int = 4,
        min_references: int = zalo.MIN_REFERENCES,
        **kwargs: Any,
    ):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self._src = None if src is None else pathlib.Path(src)
        self._records = records
        self._threads = encode_threads
        self._min_references = min_references
        self._options = {
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            "frame_stride": int(frame_stride),
            "jpeg_quality": int(jpeg_quality),
        }
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
        if self.builder_config.name == FRAMES:
            features = tfds.features.FeaturesDict(
                {
                    "image": image,
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                    "video_id": tfds.features.Text(),
                    "class_id": np.int32,
                    "frame_index": np.int32,
                    "height": np.int32,
                    "width": np.int32,
                }
            )
        else:
            features = tfds.features.FeaturesDict(
                {
                    "image": image,
                    "video_id": tfds.features.Text(),
                    "class_id": np.int32,
                    "reference_index": np.int32,
                    "file_name": tfds.features.Text(),
                }
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Zalo AI Challenge 2025 (UAV search): drone-video frames with xyxy "
            "pixel boxes and each video's reference photos.",
            features=features,
            homepage="https://github.com/it-dainb/zalo_ai_2025",
            disable_shuffling=True,  # record order = generation order, indexed in metadata
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # local data only
        records = self._records
        if records is None:
            if self._src is None:
                raise ValueError(
                    f"{NAME}: building needs src=<folder with samples/ and annotations/>"
                )
            records, report = zalo.load_dataset(self._src, min_references=self._min_references)
            report.raise_if_errors()
        if not records:
            raise DatasetError(f"{NAME}: no usable video under {self._src}")
        records = sorted(records, key=lambda r: r.video_id)
        class_ids = {r.video_id: i for i, r in enumerate(records)}
        split = split_videos(list(class_ids), self._options["val_fraction"], self._options["seed"])
        metadata = self.info.metadata
        metadata.clear()  # a forced rebuild starts from the old info
        metadata["build"] = dict(
            self._options, source=str(self._src.resolve()) if self._src else ""
        )
        metadata["video_ids"] = list(class_ids)
        metadata["splits"] = {}
        by_id = {r.video_id: r for r in records}
        return {
            name: self._generate_examples(name, [by_id[v] for v in ids], class_ids)
            for name, ids in split.items()
            if ids
        }

    def _generate_examples(
        self, split: str, records: Sequence[zalo.VideoRecord], class_ids: dict[str, int]
    ) -> Iterator[tuple[int, dict]]:
        """(key, example) of one split; keys ascend in generation order (see _KEY_BITS)."""
        if self.builder_config.name == FRAMES:
            return self._generate_frames(split, records, class_ids)
        return self._generate_references(split, records, class_ids)

    def _generate_frames(
        self, split: str, records: Sequence[zalo.VideoRecord], class_ids: dict[str, int]
    ) -> Iterator[tuple[int, dict]]:
        index: list[dict] = []
        self.info.metadata["splits"][split] = index
        position = 0
        stride, quality = self._options["frame_stride"], self._options["jpeg_quality"]
        for record in records:
            video = {"video_id": record.video_id, "class_id": class_ids[record.video_id]}
            boxes_by_frame = {
                int(f): np.asarray(b, np.float32).reshape(-1, 4) for f, b in record.boxes.items()
            }
            flags, seen = [], set()
            frames = video_io.iter_frames(record.video_path, stride=stride)
            for frame, height, width, jpeg in encoded_frames(frames, quality, self._threads):
                boxes = boxes_by_frame.get(frame, np.zeros((0, 4), np.float32))
                example = {"image": jpeg, "boxes": boxes, "frame_index": frame, **video}
                yield (
                    (position + len(flags)) << _KEY_SHIFT,
                    dict(example, height=height, width=width),
                )
                flags.append(len(boxes) > 0)
                seen.add(frame)
            lost = sorted(f for f in boxes_by_frame if f not in seen and f % stride == 0)
            if lost:
                log.warning(
                    "%s: %d annotated frames (first %s) were not decoded; left out",
                    record.video_path,
                    len(lost),
                    lost[:3],
                )
            index.append(dict(video, start=position, count=len(flags), positives=_runs(flags)))
            position += len(flags)
        if position >= 1 << _KEY_BITS:
            raise ValueError(
                f"split {split!r} has {position} frames; at most {1 << _KEY_BITS} "
                "fit the key space: raise frame_stride"
            )

    def _generate_references(
        self, split: str, records: Sequence[zalo.VideoRecord], class_ids: dict[str, int]
    ) -> Iterator[tuple[int, dict]]:
        index: list[dict] = []
        self.info.metadata["splits"][split] = index
        position = 0
        for record in records:
            video = {"video_id": record.video_id, "class_id": class_ids[record.video_id]}
            index.append(dict(video, start=position, count=len(record.reference_paths)))
            for k, path in enumerate(record.reference_paths):
                image = reference_bytes(path, self._options["jpeg_quality"])
                example = {"image": image, "reference_index": k, "file_name": path.name}
                yield position << _KEY_SHIFT, dict(example, **video)
                position += 1


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What `build_dataset` did: examples per config and split, the source's report."""

    num_examples: dict[str, dict[str, int]]  # {"frames": {"train": n, ...}, "references": ...}
    report: Report
    reused: bool  # True when an identical build already existed (nothing generated)


def build_dataset(
    src: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    frame_stride: int = 1,
    jpeg_quality: int = 90,
    overwrite: bool = False,
    allow_errors: bool = False,
    check_videos: bool = True,
    encode_threads: int = 4,
    min_references: int = zalo.MIN_REFERENCES,
) -> BuildResult:
    """Validate ``src`` and build both configs (frames, references) under ``data_dir``.

    An existing build from the same source with the same options is reused; otherwise it is
    an error unless ``overwrite``, which always regenerates (TFDS deletes the old version
    first, so an interrupted overwrite leaves no dataset rather than a mixed one).
    Validation errors in ``src`` (`zalo.load_dataset`) raise DatasetError unless
    ``allow_errors`` (then the usable videos are built). ``min_references``: reference photos
    each video must have (img_1..img_K, `zalo.load_dataset`); lower it for K-shot data.
    """
    records, report = zalo.load_dataset(
        src, check_videos=check_videos, min_references=min_references
    )
    log.info("%s", report.format())
    if not allow_errors:
        report.raise_if_errors()
    options = {
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "frame_stride": int(frame_stride),
        "jpeg_quality": int(jpeg_quality),
        "source": str(pathlib.Path(src).resolve()),
    }
    existing = [c for c in CONFIGS if (dataset_path(data_dir, c) / "dataset_info.json").is_file()]
    for config in existing:
        built = {
            k: v
            for k, v in load_metadata(data_dir, config).get("build", {}).items()
            if k in options
        }
        if built != options and not overwrite:
            raise ValueError(
                f"{dataset_path(data_dir, config)} was built with {built}, not "
                f"{options}: pass overwrite=True (--overwrite) or another data_dir"
            )
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    summary = {}
    for config in CONFIGS:
        # file_format goes to the constructor: download_and_prepare(file_format=...) refuses
        # to set it on an info restored from an existing build (the overwrite case).
        builder = ZaloRefDet(
            config=config,
            data_dir=os.fspath(data_dir),
            src=src,
            records=records,
            encode_threads=encode_threads,
            file_format="array_record",
            **{k: v for k, v in options.items() if k != "source"},
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(download_mode=mode)
        )
        summary[config] = {name: split.num_examples for name, split in builder.info.splits.items()}
    return BuildResult(
        num_examples=summary, report=report, reused=not overwrite and len(existing) == len(CONFIGS)
    )
