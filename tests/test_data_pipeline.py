"""TFDS build/read and the grain episode pipeline (fast: tiny videos, 64² queries).

The augmentations themselves are tested in tests/test_transforms.py.

The raw dataset comes from `jdet.data.synthetic.generate`; `make_square_dataset` (coloured
squares on grey noise, written with PyAV + Pillow) is the fallback when it is missing, and
also serves the end-to-end pixel test, where the object must be findable by its colour.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jdet.data import tfds_builder as tb
from jdet.data import tfds_source as ts
from jdet.data.episodes import EpisodeConfig
from jdet.data.loader import EpisodeLoader
from jdet.data.pipeline import BATCH_KEYS, make_dataset, make_iterator
from tests.square_videos import make_square_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {"query_size": 64, "support_size": 32, "episodes_per_epoch": 8}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def make_raw_dataset(root: pathlib.Path) -> pathlib.Path:
    try:
        from jdet.data import synthetic
    except ImportError:
        return make_square_dataset(root)
    return synthetic.generate(root, 5, 0, frames=20, width=128, height=96)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("data")
    raw = make_raw_dataset(tmp / "raw")
    tb.build_dataset(raw, tmp / "tfds", val_fraction=0.2, seed=0)
    return tmp / "tfds"


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("squares")
    tb.build_dataset(make_square_dataset(tmp / "raw"), tmp / "tfds", val_fraction=0.2, seed=0)
    return tmp / "tfds"


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# TFDS builder
# ---------------------------------------------------------------------------------------------


def test_split_videos_is_deterministic_disjoint_and_covering():
    ids = [f"v{i}" for i in range(10)]
    split = tb.split_videos(ids, 0.2, seed=3)
    assert split == tb.split_videos(list(reversed(ids)), 0.2, seed=3)
    assert len(split["val"]) == 2 and not set(split["val"]) & set(split["train"])
    assert sorted(split["train"] + split["val"]) == ids
    assert tb.split_videos(ids, 0.0, seed=0)["val"] == []
    assert len(tb.split_videos(ids[:2], 0.01, seed=0)["val"]) == 1  # at least one


def test_build_and_read_back(built):
    frames_meta = ts.load_metadata(built, ts.FRAMES)
    refs_meta = ts.load_metadata(built, ts.REFERENCES)
    assert frames_meta["build"] == refs_meta["build"]
    assert len(frames_meta["video_ids"]) == 5
    for split in ("train", "val"):
        frames = ts.load_split(built, split)
        refs = ts.load_split(built, split, config=ts.REFERENCES)
        videos = frames_meta["splits"][split]
        assert len(frames) == sum(v["count"] for v in videos)
        for video in videos:  # the metadata index matches the records
            flags = np.zeros(video["count"], bool)
            for a, b in video["positives"]:
                flags[a:b] = True
            for offset in range(video["count"]):
                example = frames[video["start"] + offset]
                assert example["video_id"].decode() == video["video_id"]
                assert example["class_id"] == video["class_id"]
                boxes = ts.example_boxes(example)
                assert boxes.shape[1] == 4 and boxes.dtype == np.float32
                assert (len(boxes) > 0) == flags[offset]
                assert example["image"].shape == (example["height"], example["width"], 3)
                assert example["image"].dtype == np.uint8
        for video in refs_meta["splits"][split]:
            for k in range(video["count"]):
                example = refs[video["start"] + k]
                assert example["video_id"].decode() == video["video_id"]
                assert example["reference_index"] == k and example["image"].ndim == 3
    assert "tensorflow" not in sys.modules


def test_build_reuses_same_options_and_refuses_different(built):
    raw = built.parent / "raw"
    stamp = (ts.dataset_path(built) / "dataset_info.json").stat().st_mtime_ns
    tb.build_dataset(raw, built, val_fraction=0.2, seed=0)
    assert (ts.dataset_path(built) / "dataset_info.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="overwrite"):
        tb.build_dataset(raw, built, val_fraction=0.2, seed=1)
    with pytest.raises(KeyError, match="no split 'test'"):
        ts.load_split(built, "test")


def test_interrupted_build_is_never_read_as_complete(tmp_path, monkeypatch):
    raw = make_square_dataset(tmp_path / "raw", num_videos=3, num_frames=8)
    data_dir = tmp_path / "tfds"
    real_iter_frames = tb.video_io.iter_frames

    def crash_midway(path, **kwargs):
        for i, item in enumerate(real_iter_frames(path, **kwargs)):
            if i == 5:
                raise RuntimeError("simulated crash")
            yield item

    monkeypatch.setattr(tb.video_io, "iter_frames", crash_midway)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tb.build_dataset(raw, data_dir, val_fraction=0.0)
    assert not ts.dataset_path(data_dir).exists()
    with pytest.raises(ts.DatasetNotBuiltError, match="build_dataset.py"):
        ts.load_split(data_dir, "train")
    monkeypatch.undo()

    # A hard kill (no exception handling) leaves the temporary folder behind, never the
    # version folder: loading names the leftover, rebuilding succeeds next to it.
    script = textwrap.dedent(f"""
        import os
        from jdet.data import tfds_builder as tb
        real = tb.video_io.iter_frames
        def killed(path, **kwargs):
            for i, item in enumerate(real(path, **kwargs)):
                if i == 5:
                    os._exit(9)
                yield item
        tb.video_io.iter_frames = killed
        tb.build_dataset({str(raw)!r}, {str(data_dir)!r}, val_fraction=0.0)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        check=False,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    assert list(ts.dataset_path(data_dir).parent.glob("incomplete.*"))
    with pytest.raises(ts.DatasetNotBuiltError, match="unfinished builds"):
        ts.load_split(data_dir, "train")

    tb.build_dataset(raw, data_dir, val_fraction=0.0)
    assert len(ts.load_split(data_dir, "train")) == 3 * 8
    assert "val" not in ts.load_metadata(data_dir)["splits"]


# ---------------------------------------------------------------------------------------------
# Episode pipeline
# ---------------------------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_values(built):
    cfg = EpisodeConfig(**SMALL)
    with make_iterator(built, "train", cfg, process_index=0, process_count=1) as it:
        batch = next(it)
    b, n, k, s, q, m = 8, 2, 3, 32, 64, cfg.max_boxes
    expected = {
        "query": ((b, q, q, 3), np.float32),
        "support": ((b, n, k, s, s, 3), np.float32),
        "support_mask": ((b, n), np.bool_),
        "boxes": ((b, m, 4), np.float32),
        "labels": ((b, m), np.int32),
        "box_mask": ((b, m), np.bool_),
        "class_ids": ((b, n), np.int32),
        "query_way": ((b,), np.int32),
    }
    assert set(batch) == set(BATCH_KEYS) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    for key in ("query", "support"):
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert batch["support_mask"].all()
    np.testing.assert_array_equal(batch["query_way"], [0, 0, 0, 0, 1, 1, 1, 1])
    assert (batch["class_ids"] == batch["class_ids"][0]).all()
    assert len(set(batch["class_ids"][0])) == 2 and batch["class_ids"].min() >= 0
    real = batch["box_mask"]
    boxes = batch["boxes"][real]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= q
    assert (batch["labels"][real] < n).all()
    assert (batch["boxes"][~real] == 0).all() and (batch["labels"][~real] == 0).all()
    # all queries of the episode share the same support
    assert (batch["support"] == batch["support"][:1]).all()


def test_same_seed_same_batches_and_workers_do_not_change_them(built):
    cfg = EpisodeConfig(**SMALL)
    args = {"process_index": 0, "process_count": 1}
    with make_iterator(built, "train", cfg, seed=5, **args) as it:
        first = take(it, 3)
    with make_iterator(built, "train", cfg, seed=5, num_threads=0, **args) as it:
        assert_batches_equal(first, take(it, 3))
    with make_iterator(built, "train", cfg, seed=5, worker_count=2, **args) as it:
        assert_batches_equal(first, take(it, 3))
    with make_iterator(built, "train", cfg, seed=6, **args) as it:
        assert not np.array_equal(first[0]["query"], next(it)["query"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_next_batches(built, workers):
    cfg = EpisodeConfig(**SMALL)  # 8 episodes per epoch: batches 5..9 cross into epoch 1
    args = {"seed": 1, "process_index": 0, "process_count": 1}
    with make_iterator(built, "train", cfg, **args) as it:
        reference = take(it, 10)
    with make_iterator(built, "train", cfg, worker_count=workers, **args) as it:
        take(it, 5)
        state = json.loads(json.dumps(it.get_state()))
    assert state["position"] == 5
    with make_iterator(built, "train", cfg, **args) as it:  # resumed without workers
        it.set_state(state)
        assert_batches_equal(reference[5:], take(it, 5))
    other = make_iterator(built, "train", cfg, seed=2, process_index=0, process_count=1)
    with other, pytest.raises(ValueError, match="different pipeline"):
        other.set_state(state)


def test_two_shards_are_disjoint_and_cover_the_epoch(built):
    cfg = EpisodeConfig(**SMALL)
    full = list(
        make_dataset(built, "train", cfg, seed=3, num_epochs=2, process_index=0, process_count=1)
    )
    shards = [
        list(
            make_dataset(
                built, "train", cfg, seed=3, num_epochs=2, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(full) == 16 and [len(s) for s in shards] == [8, 8]
    # per epoch, shard p holds global episodes p, p + 2, ...: interleaved they are the epoch
    interleaved = [shards[i % 2][i // 2] for i in range(16)]
    assert_batches_equal(full, interleaved)
    assert not np.array_equal(full[0]["query"], full[8]["query"])  # epochs differ


def test_process_batches_concatenate_to_the_global_batch(built):
    """Two processes with 2 episodes each per batch: process 0's batch followed by process
    1's is the one-process batch of 4 episodes (what jdet.distributed.global_batch builds)."""
    one = make_dataset(
        built,
        "train",
        EpisodeConfig(**SMALL, episodes_per_batch=4),
        seed=5,
        num_epochs=1,
        process_index=0,
        process_count=1,
    )
    parts = [
        make_dataset(
            built,
            "train",
            EpisodeConfig(**SMALL, episodes_per_batch=2),
            seed=5,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        for p in range(2)
    ]
    assert len(one) == 2 and [len(p) for p in parts] == [2, 2]
    glued = [
        {k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in BATCH_KEYS} for i in range(2)
    ]
    assert_batches_equal(list(one), glued)


def test_negative_share_and_negative_frames_have_no_boxes(built):
    cfg = EpisodeConfig(**SMALL, negative_ratio=0.3)
    loader = EpisodeLoader(built, "train", cfg)
    plans = [loader.plan(0, e) for e in range(400)]
    negative = np.array([q.negative for p in plans for q in p.queries])
    assert abs(negative.mean() - 0.3) < 0.04, negative.mean()
    # "mixed": about half the negative tiles come from videos outside the episode
    tiles = [(t, p) for p in plans for q in p.queries if q.negative for t in q.tiles]
    cross = np.array([t.label == -1 for t, _ in tiles])
    assert 0.35 < cross.mean() < 0.65, cross.mean()
    for tile, plan in tiles:
        video = loader.index.video_of_record(tile.record)
        outside = all(loader.index.videos[v] is not video for v in plan.videos)
        assert outside == (tile.label == -1)
    # without augmentation a positive frame always keeps its box, a negative has none
    plain = EpisodeConfig(**SMALL, negative_ratio=0.5, augment=False)
    loader = EpisodeLoader(built, "train", plain)
    for episode in range(3):
        plan = loader.plan(0, episode)
        batch = loader((0, episode))
        np.testing.assert_array_equal(
            batch["box_mask"].any(axis=1), [not q.negative for q in plan.queries]
        )


def test_episodes_per_batch_concatenates_episodes_and_padded_ways(built):
    one = list(
        make_dataset(built, "train", EpisodeConfig(**SMALL), process_index=0, process_count=1)[:2]
    )
    two = make_dataset(
        built,
        "train",
        EpisodeConfig(**SMALL, episodes_per_batch=2),
        process_index=0,
        process_count=1,
    )[0]
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(two[key], np.concatenate([one[0][key], one[1][key]]))
    # the val split has one video: the second way is padding
    batch = make_dataset(built, "val", EpisodeConfig(**SMALL), process_index=0, process_count=1)[0]
    assert batch["support_mask"][:, 0].all() and not batch["support_mask"][:, 1].any()
    assert (batch["class_ids"][:, 1] == -1).all() and (batch["query_way"] == 0).all()
    assert (batch["support"][:, 1] == 0).all() and (batch["labels"] == 0).all()


def test_config_validation_names_the_field():
    assert EpisodeConfig().with_batch_size(16).episodes_per_batch == 2
    with pytest.raises(ValueError, match="batch_size=12"):
        EpisodeConfig().with_batch_size(12)
    with pytest.raises(ValueError, match="query_size"):
        EpisodeConfig(query_size=100)
    with pytest.raises(ValueError, match="negative_ratio"):
        EpisodeConfig(negative_ratio=1.5)
    with pytest.raises(ValueError, match="episodes_per_epoch"):
        make_dataset(
            "/nonexistent",
            "train",
            EpisodeConfig(episodes_per_epoch=1),
            process_index=0,
            process_count=2,
        )


def test_end_to_end_boxes_lie_on_the_object(squares):
    """Decode (DCT-scaled), mosaic, affine, HSV, flip: every box covers its coloured square."""
    cfg = EpisodeConfig(
        query_size=96,
        support_size=32,
        episodes_per_epoch=8,
        mosaic_prob=0.5,
        negative_strategy="background",
    )
    loader = EpisodeLoader(squares, "train", cfg, seed=0)
    checked = 0
    for episode in range(6):
        plan = loader.plan(0, episode)
        batch = loader((0, episode))
        for slot in range(len(plan.queries)):
            image = np.round(batch["query"][slot] * 255).astype(np.uint8)
            saturated = image.max(axis=2).astype(int) - image.min(axis=2) > 90
            if plan.queries[slot].negative:  # own-video background frames: no object at all
                assert saturated.sum() == 0
            for box in batch["boxes"][slot][batch["box_mask"][slot]]:
                x1, y1, x2, y2 = box
                ix1, iy1 = int(max(x1 - 3, 0)), int(max(y1 - 3, 0))
                ys, xs = np.nonzero(saturated[iy1 : int(y2 + 3), ix1 : int(x2 + 3)])
                extent = np.array(
                    [xs.min() + ix1, ys.min() + iy1, xs.max() + ix1 + 1, ys.max() + iy1 + 1]
                )
                np.testing.assert_allclose(box, extent, atol=2.0)
                checked += 1
    assert checked >= 10
