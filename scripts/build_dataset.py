"""Build the TFDS dataset (frames + reference photos, ArrayRecord) from a challenge-layout split.

    python3 scripts/build_dataset.py --src data/synth --data-dir data/tfds
    python3 scripts/build_dataset.py --src train/ --data-dir data/tfds --val-fraction 0.2 \\
        --seed 0 --frame-stride 5 --overwrite

Writes DATA_DIR/zalo_ref_det/{frames,references}/<version>/ with splits `train` and `val`
(disjoint videos, `--val-fraction` of them, chosen by `--seed`); see jdet/data/tfds_builder.py.
The source is validated first (jdet.data.zalo); errors stop the build unless --allow-errors.
Re-running with the same options reuses the build; different options need --overwrite.
Reading it back: `jdet.data.tfds_source.load_split(DATA_DIR, "train")` or the episode pipeline
`jdet.data.pipeline.make_iterator(DATA_DIR, "train", EpisodeConfig())`.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time

from jdet.data import tfds_builder, tfds_source
from jdet.data.report import DatasetError


def _size_on_disk(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="split folder with samples/, annotations/")
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of videos in the val split (0: no val split)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val video split")
    parser.add_argument(
        "--frame-stride", type=int, default=1, help="keep frames 0, s, 2s, ... of every video"
    )
    parser.add_argument("--jpeg-quality", type=int, default=90, help="frame JPEG quality")
    parser.add_argument("--threads", type=int, default=4, help="JPEG encoding threads")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="build the usable videos even when validation finds errors",
    )
    parser.add_argument(
        "--no-video-check",
        action="store_true",
        help="validate from mp4 headers only (no trial decoding)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        result = tfds_builder.build_dataset(
            args.src,
            args.data_dir,
            val_fraction=args.val_fraction,
            seed=args.seed,
            frame_stride=args.frame_stride,
            jpeg_quality=args.jpeg_quality,
            overwrite=args.overwrite,
            allow_errors=args.allow_errors,
            check_videos=not args.no_video_check,
            encode_threads=args.threads,
        )
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"build_dataset: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(result.report.format())
    frames = sum(result.num_examples[tfds_source.FRAMES].values())
    print(
        f"\n{'reused' if result.reused else 'built'} {tfds_source.NAME} "
        f"v{tfds_builder.ZaloRefDet.VERSION} in {args.data_dir} ({seconds:.1f} s"
        + ("" if result.reused else f", {frames / seconds:.0f} frames/s")
        + ")"
    )
    print("| config | " + " | ".join(tfds_source.SPLITS) + " | size |")
    print("|---|" + "---:|" * (len(tfds_source.SPLITS) + 1))
    for config, splits in result.num_examples.items():
        size = _size_on_disk(tfds_source.dataset_path(args.data_dir, config)) / 2**20
        counts = " | ".join(str(splits.get(s, 0)) for s in tfds_source.SPLITS)
        print(f"| {config} | {counts} | {size:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
