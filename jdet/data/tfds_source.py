"""Reading the ``zalo_ref_det`` TFDS dataset: random-access sources and its record index.

Reading needs only the built files (``tfds.builder_from_directory``): no TensorFlow, no
builder code, no video decoder, so grain worker processes stay light. The dataset itself, its
features, splits and metadata are described in `jdet.data.tfds_builder`, which writes it.

    frames = load_split(data_dir, "train")                   # frames[i] -> dict of numpy
    refs = load_split(data_dir, "train", config=REFERENCES)  # reference photos
    index = load_metadata(data_dir)                          # per-video record ranges
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

NAME = "zalo_ref_det"
VERSION = "1.0.0"  # tfds_builder.ZaloRefDet.VERSION; reading looks for exactly this version
FRAMES = "frames"
REFERENCES = "references"
CONFIGS = (FRAMES, REFERENCES)
SPLITS = ("train", "val")


class DatasetNotBuiltError(FileNotFoundError):
    """No complete dataset of this version under data_dir (never built, or interrupted)."""


def dataset_path(data_dir: str | os.PathLike, config: str = FRAMES) -> pathlib.Path:
    """data_dir/zalo_ref_det/<config>/<VERSION>: the folder a complete build renames into."""
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
    return pathlib.Path(data_dir) / NAME / config / VERSION


def _builder(data_dir: str | os.PathLike, config: str) -> tfds.core.DatasetBuilder:
    """Read-only builder of a complete build; DatasetNotBuiltError (naming leftovers) if none.

    TFDS writes ``dataset_info.json`` into a temporary folder and renames the folder to the
    version only at the very end, so its presence means the build finished.
    """
    path = dataset_path(data_dir, config)
    if not (path / "dataset_info.json").is_file():
        partial = sorted(p.name for p in path.parent.glob("incomplete.*"))
        hint = f" (unfinished builds left: {partial})" if partial else ""
        raise DatasetNotBuiltError(
            f"{path}: no complete {NAME}/{config} v{VERSION} dataset{hint}; build it with: "
            f"python scripts/build_dataset.py --src ROOT --data-dir {data_dir}"
        )
    return tfds.builder_from_directory(os.fspath(path))


def load_split(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    config: str = FRAMES,
    decode_images: bool = True,
):
    """Random-access source over one split: ``len(source)``, ``source[i]`` -> dict of numpy.

    frames: image [H, W, 3] uint8 (the JPEG bytes when decode_images=False), boxes [n, 4] f32
    xyxy pixels (read them with `example_boxes`), video_id bytes, class_id, frame_index,
    height, width ints. references: image, video_id, class_id, reference_index (0, 1, ... per
    video), file_name. Raises DatasetNotBuiltError without a complete build, KeyError for an
    unknown split.
    """
    builder = _builder(data_dir, config)
    if split not in builder.info.splits:
        raise KeyError(
            f"{dataset_path(data_dir, config)}: no split {split!r}; available: "
            f"{sorted(builder.info.splits)}"
        )
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split, decoders=decoders)


def load_metadata(data_dir: str | os.PathLike, config: str = FRAMES) -> dict:
    """A config's metadata as plain JSON: ``build`` (the options it was built with),
    ``video_ids`` (all videos, class id = position) and ``splits`` (the record index, see
    `jdet.data.tfds_builder`)."""
    return json.loads(json.dumps(dict(_builder(data_dir, config).info.metadata)))


def example_boxes(example: dict) -> np.ndarray:
    """An example's boxes as [n, 4] f32; an empty list (Sequence read-back) gives [0, 4]."""
    boxes = example.get("boxes")
    if boxes is None or len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    return np.stack([np.asarray(b, np.float32) for b in boxes]).reshape(-1, 4)
