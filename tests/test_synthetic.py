"""The synthetic generator (jdet.data.synthetic, jdet.data.render): valid layout, exact boxes,
determinism."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jdet.data import render, synthetic, video, zalo

SEED = 11
OPTIONS = dict(frames=40, width=160, height=96)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    return synthetic.generate(tmp_path_factory.mktemp("synth") / "a", 3, SEED, **OPTIONS)


def _annotations(root: pathlib.Path) -> dict[str, dict[int, tuple]]:
    entries = json.loads((root / "annotations" / "annotations.json").read_text())
    return {e["video_id"]: {b["frame"]: (b["x1"], b["y1"], b["x2"], b["y2"])
                            for g in e["annotations"] for b in g["bboxes"]} for e in entries}


def test_generated_dataset_loads_cleanly(dataset):
    records, report = zalo.load_dataset(dataset)
    assert report.ok and not report.warnings, report.format()
    assert [r.video_id for r in records] == ["synth_000", "synth_001", "synth_002"]
    for record in records:
        assert (record.num_frames, record.height, record.width) == (40, 96, 160)
        assert len(record.reference_paths) == 3
        assert 0 < len(record.boxes) < 40  # present in some frames, absent in others
    meta = json.loads((dataset / "synthetic.json").read_text())
    assert meta["seed"] == SEED and meta["options"]["frames"] == 40


def test_validator_cli_exit_zero(dataset):
    result = subprocess.run([sys.executable, "-m", "jdet.data.zalo", "validate", str(dataset)],
                            capture_output=True, text=True, timeout=60,
                            cwd=pathlib.Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 videos" in result.stdout and result.stdout.strip().endswith("OK")


def test_same_seed_identical_files_other_seed_differs(dataset, tmp_path):
    again = synthetic.generate(tmp_path / "b", 3, SEED, **OPTIONS)
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        twin = again / path.relative_to(dataset)
        # mp4 too: write_video(deterministic=True) makes x264 reproducible.
        assert twin.read_bytes() == path.read_bytes(), path
    other = synthetic.generate(tmp_path / "c", 1, SEED + 1, **OPTIONS)
    assert _annotations(other)["synth_000"] != _annotations(dataset)["synth_000"]


def test_video_index_independent_of_dataset_size(dataset, tmp_path):
    small = synthetic.generate(tmp_path / "d", 1, SEED, **OPTIONS)
    assert _annotations(small)["synth_000"] == _annotations(dataset)["synth_000"]


def test_boxes_equal_visible_mask_extent_and_absent_frames_have_none(dataset):
    annotations = _annotations(dataset)
    for index in range(3):
        scene = synthetic.sample_scene(SEED, index, synthetic.Options(**OPTIONS))
        boxes = annotations[scene.video_id]
        absent = set(scene.absent_frames.tolist())
        assert absent and not absent & set(boxes)  # absent intervals exist and have no box
        assert any(0.3 * 40 < f < 0.85 * 40 for f in absent)  # a gap mid-video, not just ends
        for t, (frame, visible) in enumerate(synthetic.render_frames(scene)):
            assert frame.shape == (96, 160, 3) and frame.dtype == np.uint8
            if t in boxes:
                x1, y1, x2, y2 = boxes[t]
                ys, xs = np.nonzero(visible)
                assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 96
            else:
                assert visible.sum() < synthetic.MIN_VISIBLE_PIXELS


def test_video_pixels_match_rendered_frames(dataset):
    """Decoded frame t is the rendered frame t (lossy), and the object shows inside its box."""
    scene = synthetic.sample_scene(SEED, 1, synthetic.Options(**OPTIONS))
    rendered = [(f.astype(np.float32), m) for f, m in synthetic.render_frames(scene)]
    boxes = _annotations(dataset)[scene.video_id]
    checked = sorted(boxes)[::7]
    decoded = video.read_frames(dataset / "samples" / scene.video_id / "drone_video.mp4", checked)
    for frame, t in zip(decoded, checked):
        errors = [np.abs(frame - r).mean() for r, _ in rendered]
        assert int(np.argmin(errors)) == t and errors[t] < 10.0  # others: ~40
        # The object's colour statistics differ between its visible pixels and the rest.
        mask = rendered[t][1]
        inside, outside = frame[mask].mean(0), frame[~mask].mean(0)
        assert np.abs(inside - outside).max() > 5


def test_scene_has_occlusion_lighting_and_distractors():
    scene = synthetic.sample_scene(SEED, 0, synthetic.Options(**OPTIONS))
    assert 1 <= len(scene.distractors) <= 3
    assert np.abs(scene.gain - 1).max() > 0.15  # a lighting change
    hidden = 0  # the occluder hides some of the object in some frame
    for t, (_, visible) in enumerate(synthetic.render_frames(scene)):
        if scene.target.present[t]:
            canvas = np.zeros((96, 160, 3), np.float32)
            drawn = synthetic._draw(canvas, scene.target, t) >= 0.5
            hidden = max(hidden, int((drawn & ~visible).sum()))
    assert hidden > 0


def test_reference_photos(dataset):
    refs = sorted((dataset / "samples" / "synth_002" / "object_images").iterdir())
    assert [p.name for p in refs] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    for path in refs:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert all(224 <= s <= 288 for s in image.size)


def test_val_fraction_writes_two_splits(tmp_path):
    out = synthetic.generate(tmp_path / "s", 3, 0, val_fraction=0.3, frames=20, width=96,
                             height=64, num_references=1)
    train, _ = zalo.load_dataset(out / "train", check_videos=False, min_references=1)
    val, report = zalo.load_dataset(out / "val", check_videos=False, min_references=1)
    assert [r.video_id for r in train] == ["synth_000", "synth_001"]
    assert [r.video_id for r in val] == ["synth_002"] and report.ok


def test_refuses_bad_options_and_non_empty_folder(dataset, tmp_path):
    with pytest.raises(ValueError, match="even"):
        synthetic.generate(tmp_path / "x", 1, 0, width=161)
    with pytest.raises(ValueError, match="frames"):
        synthetic.generate(tmp_path / "x", 1, 0, frames=5)
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(dataset, 1, 0, **OPTIONS)


def test_cli_and_overwrite(tmp_path, capsys):
    args = ["--out", str(tmp_path / "cli"), "--num-videos", "1", "--seed", "2", "--frames",
            "20", "--size", "96x64"]
    assert synthetic.main(args) == 0
    assert "wrote 1 videos" in capsys.readouterr().out
    assert synthetic.main(args + ["--overwrite"]) == 0
    _, report = zalo.load_dataset(tmp_path / "cli")
    assert report.ok and report.num_videos == 1


def test_render_primitives():
    rng = np.random.default_rng(0)
    sprite = render.random_object(rng, 64)
    assert sprite.shape == (64, 64, 4) and sprite.dtype == np.uint8
    assert 0 < (sprite[..., 3] > 127).mean() < 1
    turned = render.transform_sprite(sprite, 40, 45)
    assert turned.shape[0] > 40 and turned.shape[2] == 4  # rotation grows the canvas
    canvas = np.zeros((30, 30, 3), np.float32)
    coverage = render.paste(canvas, turned, -20, 10)  # partly outside: clipped, no error
    assert coverage.shape == (30, 30) and coverage.max() <= 1 and coverage[:10].max() == 0
    assert synthetic.box_from_mask(np.zeros((5, 5), bool)) is None
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert synthetic.box_from_mask(mask) == (3, 2, 9, 5)
