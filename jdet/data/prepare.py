"""Data preparation for a run: the synthetic videos (training and validation) and the TFDS
build the trainer reads (`prepare_data`, `eval_samples`), made once per config and reused."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from jdet import distributed
from jdet.data import synthetic


def ensure_synthetic(folder: pathlib.Path, seed: int, options: dict[str, Any]) -> bool:
    """Generate synthetic videos into `folder` unless the ones there were made with the same
    seed and options (recorded in synthetic.json); True when it (re)generated them."""
    record = folder / "synthetic.json"
    if record.exists():
        made = json.loads(record.read_text())
        same = made.get("seed") == seed and made.get("num_videos") == options["num_videos"]
        same = same and all(
            made.get("options", {}).get(k) == v for k, v in options.items() if k != "num_videos"
        )
        if same:
            return False
        print(f"{folder}: cached synthetic videos differ from the config; regenerating", flush=True)
    print(f"generating synthetic videos into {folder}", flush=True)
    synthetic.generate(folder, seed=seed, overwrite=True, **options)
    return True


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """The TFDS folder to read, generating the synthetic videos and building it if missing."""
    # Imported here: tensorflow_datasets takes seconds to import, and `eval_samples` (the
    # evaluation command's) needs none of it.
    from jdet.data import tfds_builder

    cache = pathlib.Path(config.data.cache_dir or workdir / "data").expanduser()
    regenerated = False
    if config.data.source == "synthetic":
        src = cache / "raw"
        regenerated = ensure_synthetic(src, config.seed, config.data.synthetic.to_dict())
    else:
        src = pathlib.Path(config.data.source).expanduser()
    data_dir = cache / "tfds"
    tfds_builder.build_dataset(
        src,
        data_dir,
        val_fraction=config.data.val_fraction,
        seed=config.seed,
        overwrite=regenerated,
    )
    return data_dir


# Synthetic validation videos come from another seed stream than the training videos.
VAL_SEED_OFFSET = 1_000_003


def eval_samples(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path | None:
    """The challenge-layout folder evaluated during training (generating the synthetic
    validation videos on first use), or None when the config has no validation set."""
    if config.eval.samples:
        return pathlib.Path(config.eval.samples).expanduser()
    if config.data.source != "synthetic" or not config.data.val_videos:
        return None
    cache = pathlib.Path(config.data.cache_dir or workdir / "data").expanduser()
    options = dict(config.data.synthetic.to_dict(), num_videos=config.data.val_videos)
    ensure_synthetic(cache / "val", config.seed + VAL_SEED_OFFSET, options)
    return cache / "val"


def prepare_data_once(config, workdir: pathlib.Path) -> pathlib.Path:
    """Process 0 generates and builds the data first; the others then find it built (on a
    shared filesystem) or build their own copy."""
    if distributed.is_main():
        data_dir = prepare_data(config, workdir)
    distributed.barrier("jdet-data")
    if not distributed.is_main():
        data_dir = prepare_data(config, workdir)
    return data_dir
