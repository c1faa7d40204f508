"""jdet.inference.predictor on a randomly initialised tiny RefDet (no training needed): shapes,
frame coordinates, strides, batch independence, determinism and bad inputs."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from jdet.data import synthetic, zalo
from jdet.data import video as video_io
from jdet.distributed import run_once
from jdet.inference.appearance import AppearanceScorer
from jdet.inference.pipeline import PredictOptions, load_samples, predict_folder
from jdet.inference.predictor import Predictor
from jdet.models.refdet import RefDet
from tests.helpers import refdet_batch

QUERY, SUPPORT, BATCH = 64, 32, 4


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    model = RefDet(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=0)
    batch = refdet_batch(b=2, n=2, k=3, hw=(QUERY, QUERY), s=SUPPORT)
    variables = run_once(jax.jit(model.init), jax.random.PRNGKey(0), batch)
    options = PredictOptions(batch_size=BATCH, max_det=20)
    return Predictor(model, variables, query_size=QUERY, support_size=SUPPORT, options=options)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor") / "data"
    return synthetic.generate(root, 2, seed=7, frames=20, width=96, height=64, reference_size=48)


def _photos(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 56, 3), np.uint8) for i in range(3)]


def test_encode_references_gives_one_unit_prototype_per_scale(predictor):
    protos = predictor.encode_references(_photos())
    assert set(protos) == {"p2", "p3", "p4", "p5"}
    for p in protos.values():
        assert p.shape[:2] == (1, 1)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(p), axis=-1), 1.0, rtol=1e-5)


def test_detect_frames_returns_scored_boxes_inside_each_frame(predictor):
    protos = predictor.encode_references(_photos())
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, shape, np.uint8) for shape in ((48, 80, 3), (100, 60, 3))]
    dets = predictor.detect_frames(frames, protos)
    assert len(dets) == 2
    for frame, d in zip(frames, dets):
        h, w = frame.shape[:2]
        assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 5
        assert 0 < len(d) <= 20  # max_det
        assert (d[:, 0] >= 0).all() and (d[:, 2] <= w).all() and (d[:, 0] <= d[:, 2]).all()
        assert (d[:, 1] >= 0).all() and (d[:, 3] <= h).all() and (d[:, 1] <= d[:, 3]).all()
        assert ((d[:, 4] >= 0) & (d[:, 4] <= 1)).all()
    # each frame's result does not depend on the others in its batch (eval-mode BatchNorm)
    alone = predictor.detect_frames(frames[1:], protos)[0]
    np.testing.assert_allclose(alone, dets[1], rtol=1e-4, atol=1e-3)


def test_detect_frames_takes_one_to_batch_size_frames(predictor):
    protos = predictor.encode_references(_photos())
    frame = np.zeros((64, 64, 3), np.uint8)
    for count in (0, BATCH + 1):
        with pytest.raises(ValueError, match=f"1..{BATCH} frames"):
            predictor.detect_frames([frame] * count, protos)


def test_tiled_detection_merges_crops_into_frame_boxes(predictor):
    """Tiles of 48 px over a 64 × 96 frame: 6 crops and the frame, one batch of 7 of 8 for
    one frame; two frames take two batches. Boxes stay in the frame, sorted by score; with a
    tile as large as the frame the result is the untiled one."""
    protos = predictor.encode_references(_photos())
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (64, 96, 3), np.uint8) for _ in range(2)]
    tiled = Predictor(
        predictor.model,
        predictor.variables,
        query_size=QUERY,
        support_size=SUPPORT,
        options=dataclasses.replace(predictor.options, tile=48, tile_overlap=0.25),
    )
    for frame, d in zip(frames, tiled.detect_frames(frames, protos)):
        assert d.dtype == np.float32 and 0 < len(d) <= 20
        assert (d[:, 0] >= 0).all() and (d[:, 2] <= 96).all() and (d[:, 1] >= 0).all()
        assert (d[:, 3] <= 64).all() and (np.diff(d[:, 4]) <= 0).all()
    whole = dataclasses.replace(predictor.options, tile=96, tile_full=False)
    same = Predictor(
        predictor.model, predictor.variables, query_size=QUERY, support_size=SUPPORT, options=whole
    )
    plain = predictor.detect_frames(frames, protos)
    for a, b in zip(same.detect_frames(frames, protos), plain):
        # one crop, the frame itself: NMS'd boxes, merged again (IoU 0.5 over NMS's 0.45)
        assert len(a) <= len(b)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-4)


def test_predict_video_strides_limits_and_repeats(predictor, samples):
    (record, *_) = load_samples(samples)
    photos = [zalo.load_reference(p) for p in record.reference_paths]
    done = []
    every_other = predictor.predict_video(
        record.video_path, photos, stride=2, on_frames=done.append
    )
    assert sorted(every_other) == list(range(0, record.num_frames, 2))
    assert sum(done) == len(every_other) and max(done) <= BATCH
    again = predictor.predict_video(record.video_path, photos, stride=2)
    for frame in every_other:
        np.testing.assert_array_equal(again[frame], every_other[frame])
    first = predictor.predict_video(record.video_path, photos, max_frames=3)
    assert sorted(first) == [0, 1, 2]
    np.testing.assert_allclose(first[2], every_other[2], rtol=1e-5, atol=1e-4)


def test_appearance_rescores_the_detectors_boxes_frame_by_frame(predictor, samples):
    """With appearance on, predict_video = the plain boxes through one AppearanceScorer."""
    (record, *_) = load_samples(samples)
    photos = [zalo.load_reference(p) for p in record.reference_paths]
    plain = predictor.predict_video(record.video_path, photos, max_frames=5)
    options = dataclasses.replace(predictor.options, appearance=2.0)
    coloured = Predictor(
        predictor.model,
        predictor.variables,
        query_size=QUERY,
        support_size=SUPPORT,
        options=options,
    ).predict_video(record.video_path, photos, max_frames=5, detector_scores=(own := {}))
    scorer = AppearanceScorer(photos, 2.0)
    assert sorted(own) == sorted(plain)
    for f in own:  # the boxes before re-scoring are the plain predictor's
        np.testing.assert_allclose(own[f], plain[f], rtol=1e-5, atol=1e-6)
    frames = video_io.read_frames(record.video_path, range(5))
    assert sorted(coloured) == sorted(plain)
    changed = 0
    for f in range(5):
        expect = scorer.rescore(frames[f], plain[f])
        np.testing.assert_allclose(coloured[f], expect, rtol=1e-5, atol=1e-6)
        assert (np.diff(coloured[f][:, 4]) <= 0).all()  # highest first
        changed += not np.allclose(np.sort(coloured[f][:, 4]), np.sort(plain[f][:, 4]))
    assert changed


def test_predict_folder_covers_every_video(predictor, samples):
    records = load_samples(samples)
    out = predict_folder(predictor, records, max_frames=2, progress=False)
    assert sorted(out) == sorted(r.video_id for r in records)
    assert all(sorted(frames) == [0, 1] for frames in out.values())


def test_query_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        Predictor(RefDet(), {"params": {}}, query_size=100, support_size=32)


def test_predict_command_names_a_missing_reference_photo(samples, tmp_path, capsys):
    import shutil

    from jdet import predict

    root = tmp_path / "data"
    shutil.copytree(samples, root)
    video = sorted((root / "samples").iterdir())[0]
    missing = video / "object_images" / "img_2.jpg"
    missing.unlink()
    argv = ["--checkpoint", str(tmp_path / "no_run"), "--samples", str(root), "--out", "s.json"]
    assert predict.main(argv) == 2
    assert str(missing.relative_to(root)) in capsys.readouterr().err  # paths within the set
    # fewer references accepted on request: the next problem is the checkpoint
    assert predict.main([*argv, "--min-references", "1"]) == 2
    assert f"{tmp_path / 'no_run'}: no such file or directory" in capsys.readouterr().err


_RETURNED = """
import pathlib, sys
import numpy as np
from jdet import _malloc
if sys.argv[1] == "fix":
    assert _malloc.fix_mmap_threshold()
def rss_kib():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
frame = np.ones(4 << 20, np.uint8); del frame  # glibc then raises its mmap threshold
before = rss_kib()
frame = np.ones(4 << 20, np.uint8); del frame  # a second frame-sized buffer, freed
print(rss_kib() - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mmap threshold (jdet._malloc)",
)
def test_fixed_mmap_threshold_returns_frame_sized_buffers_to_the_os():
    def kept_kib(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _RETURNED, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    # glibc's default keeps the freed 4 MiB in its heap (resident); fixed, it is unmapped.
    assert kept_kib("default") > 2048
    assert kept_kib("fix") < 1024
