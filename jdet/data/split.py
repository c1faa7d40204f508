"""Leave-objects-out splits of a challenge-layout folder, without copying the videos.

The score that matters is on objects the model never saw, so validation holds whole objects
out: every video of a held-out object goes to `val`, the rest to `train`. A video's object is
its id without the trailing ``_<n>`` (``Tower_2`` → ``Tower``), as in the challenge's ids.

    python -m jdet.data.split --src photo-train --holdout Tower,Boxes --out folds/0

writes ``folds/0/{train,val}/samples/<id>`` (symbolic links to the source's sample folders)
and ``folds/0/{train,val}/annotations/annotations.json`` (the source's entries of those
videos). `split_by_object` is the function; `objects` lists a folder's objects.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence

from jdet.data.zalo import ANNOTATIONS_FILE, SAMPLES_DIR

_SUFFIX = re.compile(r"_\d+$")


def object_of(video_id: str) -> str:
    """The object a video shows: its id without the trailing ``_<n>``."""
    return _SUFFIX.sub("", video_id)


def _video_ids(src: pathlib.Path) -> list[str]:
    samples = src / SAMPLES_DIR
    if not samples.is_dir():
        raise FileNotFoundError(f"{samples}: no samples folder (expected <src>/samples/<id>/)")
    return sorted(p.name for p in samples.iterdir() if p.is_dir())


def objects(src: str | pathlib.Path) -> list[str]:
    """The objects of a challenge-layout folder, sorted."""
    return sorted({object_of(v) for v in _video_ids(pathlib.Path(src))})


def split_by_object(
    src: str | pathlib.Path, out: str | pathlib.Path, holdout: Iterable[str]
) -> dict[str, list[str]]:
    """Write ``out/train`` and ``out/val`` (val: the videos of the `holdout` objects) as
    challenge-layout folders of links into `src`; returns {split: video ids}. An existing
    `out` is replaced. ValueError naming an unknown object."""
    src, out = pathlib.Path(src).absolute(), pathlib.Path(out)
    holdout = set(holdout)
    ids = _video_ids(src)
    unknown = sorted(holdout - {object_of(v) for v in ids})
    if unknown:
        raise ValueError(
            f"--holdout: no video of object(s) {', '.join(unknown)} in {src} "
            f"(objects: {', '.join(objects(src))})"
        )
    ann_path = src / ANNOTATIONS_FILE
    entries = json.loads(ann_path.read_text()) if ann_path.exists() else []
    by_id = {e.get("video_id"): e for e in entries}
    splits = {
        "train": [v for v in ids if object_of(v) not in holdout],
        "val": [v for v in ids if object_of(v) in holdout],
    }
    for split, videos in splits.items():
        root = out / split
        if root.exists():
            for link in (root / SAMPLES_DIR).glob("*"):
                link.unlink()
        (root / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        for v in videos:
            os.symlink(src / SAMPLES_DIR / v, root / SAMPLES_DIR / v, target_is_directory=True)
        (root / ANNOTATIONS_FILE).parent.mkdir(parents=True, exist_ok=True)
        kept = [by_id[v] for v in videos if v in by_id]
        (root / ANNOTATIONS_FILE).write_text(json.dumps(kept) + "\n")
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jdet.data.split", description=__doc__)
    parser.add_argument("--src", required=True, type=pathlib.Path)
    parser.add_argument("--holdout", required=True, help="comma-separated objects for val")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    try:
        splits = split_by_object(args.src, args.out, [h for h in args.holdout.split(",") if h])
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, videos in splits.items():
        names = sorted({object_of(v) for v in videos})
        print(f"{args.out / split}: {len(videos)} videos of {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
