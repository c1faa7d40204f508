"""jdet.baselines.template: the training-free baselines (template, full-frame, empty)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cv2")

from jdet.baselines import template as bt
from jdet.data.synthetic import generate
from jdet.data.zalo import load_reference
from jdet.evaluation.st_iou import box_iou
from jdet.submission import read_submission

WIDTH, HEIGHT, FRAMES = 160, 96, 20  # the generator's minimum is 20 frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("baseline") / "data"
    return generate(root, 2, seed=3, frames=FRAMES, width=WIDTH, height=HEIGHT)


VIDEO_IDS = ["synth_000", "synth_001"]


def test_template_cli_writes_a_readable_submission(dataset, tmp_path, capsys):
    out = tmp_path / "sub.json"
    code = bt.main(
        ["--samples", str(dataset), "--out", str(out), "--max-frames", "8", "--stride", "2"]
    )
    assert code == 0, capsys.readouterr().err
    tracks = read_submission(out)
    assert sorted(tracks) == VIDEO_IDS
    for boxes in tracks.values():
        assert set(boxes) <= set(range(8))
        for x1, y1, x2, y2 in boxes.values():
            assert -1 <= x1 < x2 <= WIDTH + 1 and -1 <= y1 < y2 <= HEIGHT + 1


def test_predict_video_api(dataset):
    folder = dataset / "samples" / "synth_000"
    refs = sorted((folder / "object_images").glob("*.jpg"))
    boxes = bt.predict_video(folder / "drone_video.mp4", refs, threshold=-np.inf, max_frames=3)
    assert sorted(boxes) == [0, 1, 2]  # threshold -inf: a box on every matched frame
    assert all(len(b) == 4 and b[0] < b[2] and b[1] < b[3] for b in boxes.values())
    assert bt.predict_video(folder / "drone_video.mp4", refs, threshold=2.0, max_frames=2) == {}


def test_full_frame_and_empty_methods(dataset, tmp_path):
    full, empty = tmp_path / "full.json", tmp_path / "empty.json"
    assert bt.main(["--samples", str(dataset), "--out", str(full), "--method", "full-frame"]) == 0
    assert bt.main(["--samples", str(dataset), "--out", str(empty), "--method", "empty"]) == 0
    tracks = read_submission(full)
    assert sorted(tracks) == VIDEO_IDS
    for boxes in tracks.values():
        assert boxes == {f: (0.0, 0.0, WIDTH, HEIGHT) for f in range(FRAMES)}
    raw = json.loads(empty.read_text())
    assert [(v["video_id"], v["detections"]) for v in raw] == [(v, []) for v in VIDEO_IDS]


@pytest.mark.parametrize("quarter_turns", [0, 1])
def test_template_finds_a_pasted_reference(dataset, quarter_turns):
    """A reference photo pasted onto noise (object long side 24 px) is boxed with IoU > 0.5."""
    photo = load_reference(dataset / "samples" / "synth_001" / "object_images" / "img_2.jpg")
    _, _, (cx1, cy1, cx2, cy2) = bt.crop_reference(photo)
    factor = 24 / max(cx2 - cx1, cy2 - cy1)
    size = (round(photo.shape[1] * factor), round(photo.shape[0] * factor))
    small = np.rot90(bt.cv2.resize(photo, size, interpolation=bt.cv2.INTER_AREA), quarter_turns)
    box = np.array([cx1, cy1, cx2, cy2], float) * factor
    if quarter_turns:  # 90° counter-clockwise: (x, y) -> (y, W - x)
        box = np.array([box[1], size[0] - box[2], box[3], size[0] - box[0]])
    frame = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    x0, y0 = 110, 40
    h, w = small.shape[:2]
    frame[y0 : y0 + h, x0 : x0 + w] = small
    expected = box + [x0, y0, x0, y0]

    templates = bt.build_templates([photo], 192)
    score, found = bt.match_frame(frame, templates)
    assert found is not None
    assert box_iou(found, expected) > 0.5, (score, found, expected)


def test_crop_reference_finds_the_object_on_a_plain_background():
    photo = np.full((100, 120, 3), 200, np.uint8)
    photo[30:60, 40:90] = (40, 90, 200)
    crop, mask, box = bt.crop_reference(photo)
    assert box == (40, 30, 90, 60)
    assert crop.shape == (30, 50, 3) and mask.min() == 255


def test_missing_samples_folder_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jdet.baselines.template",
            "--samples",
            str(missing),
            "--out",
            str(tmp_path / "s.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(missing / "samples") in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_video_exits_2_naming_the_path(tmp_path, capsys):
    folder = tmp_path / "samples" / "vid_0"
    (folder / "object_images").mkdir(parents=True)
    (folder / "object_images" / "img_1.jpg").write_bytes(b"")
    assert bt.main(["--samples", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    assert str(folder / "drone_video.mp4") in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
