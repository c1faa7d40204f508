"""Video I/O (jdet.data.video) and the Zalo reader/validator (jdet.data.zalo).

Corruption tests copy a small generated dataset and break it one way at a time; each asserts
that the message names the file (and video, frame, field) and that the rest still loads.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from jdet.data import synthetic, video, zalo

VID = "synth_000"  # the video the corruption tests break
OTHER = "synth_001"


# ---------------------------------------------------------------------------------- video


def _moving_frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Distinct frames: a bright square sliding over a brightness ramp."""
    frames = []
    for i in range(n):
        frame = np.full((height, width, 3), (i * 7) % 200, np.uint8)
        frame[8:24, i % (width - 16):i % (width - 16) + 16] = (255, 40, 40)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[pathlib.Path, list[np.ndarray]]:
    """A 50-frame H.264 clip with B-frames and a keyframe every 10 frames, and its full decode."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    assert video.write_video(path, iter(_moving_frames(50)), 25, gop=10) == 50
    decoded = [frame for _, frame in video.iter_frames(path)]
    return path, decoded


def test_video_info_and_full_decode(clip):
    path, decoded = clip
    assert video.video_info(path) == (50, 25.0, 48, 64)
    assert video.video_info(path, count_frames=True).num_frames == 50
    assert video.check_video(path).num_frames == 50
    assert len(decoded) == 50 and decoded[0].dtype == np.uint8 and decoded[0].shape == (48, 64, 3)
    # Lossy, but each decoded frame is closest to its own source frame (numbering is right).
    source = _moving_frames(50)
    for i in (0, 17, 49):
        errors = [np.abs(decoded[i].astype(int) - s).mean() for s in source]
        assert int(np.argmin(errors)) == i


@pytest.mark.parametrize("start,stop,stride", [(0, None, 1), (0, None, 3), (7, 31, 4),
                                               (23, None, 1), (49, None, 2), (10, 11, 1),
                                               (60, None, 1), (5, 5, 1)])
def test_iter_frames_selection_equals_full_decode(clip, start, stop, stride):
    path, decoded = clip
    got = list(video.iter_frames(path, start=start, stop=stop, stride=stride))
    assert [i for i, _ in got] == list(range(start, min(stop or 50, 50), stride))
    for i, frame in got:
        np.testing.assert_array_equal(frame, decoded[i])


@pytest.mark.parametrize("indices", [[0, 1, 2], [3, 18, 19, 41, 49], [49, 0, 25, 25, 7],
                                     [12], list(range(50))[::-1]])
def test_read_frames_sorted_and_unsorted(clip, indices):
    path, decoded = clip
    frames = video.read_frames(path, indices)
    assert frames.shape == (len(indices), 48, 64, 3) and frames.dtype == np.uint8
    for row, i in enumerate(indices):
        np.testing.assert_array_equal(frames[row], decoded[i])


def test_read_frames_edges(clip):
    path, _ = clip
    assert video.read_frames(path, []).shape == (0, 48, 64, 3)
    with pytest.raises(IndexError, match="outside 0..49"):
        video.read_frames(path, [3, 50])
    with pytest.raises(ValueError, match="stride >= 1"):
        list(video.iter_frames(path, stride=0))


def test_variable_frame_rate_numbering(tmp_path):
    """Irregular timestamps: seeking still numbers frames like a sequential decode."""
    path = tmp_path / "vfr.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    stream.options = {"g": "8"}
    pts = 0
    for i, rgb in enumerate(_moving_frames(40)):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        pts += (20, 40, 100)[i % 3]
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    decoded = [frame for _, frame in video.iter_frames(path)]
    assert len(decoded) == 40
    for row, i in enumerate([39, 5, 22, 23, 9]):
        np.testing.assert_array_equal(video.read_frames(path, [39, 5, 22, 23, 9])[row], decoded[i])
    for i, frame in video.iter_frames(path, start=21, stride=6):
        np.testing.assert_array_equal(frame, decoded[i])


def test_truncated_missing_and_garbage_videos_raise_video_error(clip, tmp_path):
    path, _ = clip
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    for bad in (truncated, garbage, tmp_path / "missing.mp4"):
        for call in (video.video_info, video.check_video, lambda p: list(video.iter_frames(p)),
                     lambda p: video.read_frames(p, [0])):
            with pytest.raises(video.VideoError, match=bad.name) as info:
                call(bad)
            assert isinstance(info.value, ValueError) and info.value.path == str(bad)


def test_truncated_faststart_video_detected(tmp_path):
    """moov first: the header opens, but packets are missing → check_video says truncated."""
    path = tmp_path / "fast.mp4"
    container = av.open(str(path), "w", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(30):
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
    container.close()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert video.video_info(cut).num_frames == 30  # the header still promises 30
    with pytest.raises(video.VideoError, match="cut.mp4.*(truncated|corrupt)"):
        video.check_video(cut)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even"):
        video.write_video(tmp_path / "odd.mp4", [np.zeros((47, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="must match"):
        video.write_video(tmp_path / "mixed.mp4", [np.zeros((48, 64, 3), np.uint8),
                                                   np.zeros((48, 66, 3), np.uint8)])
    assert not (tmp_path / "odd.mp4").exists() and not (tmp_path / "mixed.mp4").exists()


def test_write_video_deterministic(tmp_path):
    frames = _moving_frames(12)
    for name in ("a.mp4", "b.mp4"):
        video.write_video(tmp_path / name, iter(frames), 25, deterministic=True)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


# ------------------------------------------------------------------------- reference photos


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "P+transparency", "I;16", "1"])
def test_reference_modes_load_as_rgb(tmp_path, mode):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, 10:] = (200, 30, 60)
    image = Image.fromarray(rgb)
    if mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = 0
        path = tmp_path / "p.png"
    elif mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        path = tmp_path / "i16.png"
    else:
        image = image.convert(mode)
        path = tmp_path / ("x.png" if mode in ("LA", "RGBA", "P", "1") else "x.jpg")
    image.save(path)
    loaded = zalo.load_reference(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (20, 30, 3)
    if mode == "RGBA":
        assert loaded[0, 25, 0] > 150  # colour kept
    if mode == "I;16":
        assert loaded[0, 25, 0] == 200 and loaded[0, 0, 0] == 0


def test_reference_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert (zalo.load_reference(tmp_path / "t.png") == 255).all()


def test_reference_errors_name_the_file(tmp_path):
    with pytest.raises(zalo.ReferenceImageError, match="nope.jpg: reference photo not found"):
        zalo.load_reference(tmp_path / "nope.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(zalo.ReferenceImageError, match="cut.jpg: cannot read"):
        zalo.load_reference(cut)


# ------------------------------------------------------------------------------ dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    return synthetic.generate(tmp_path_factory.mktemp("zalo") / "ds", 2, seed=3, frames=30,
                              width=128, height=96)


@pytest.fixture
def copy(dataset, tmp_path) -> pathlib.Path:
    """A writable copy of the dataset to break."""
    return pathlib.Path(shutil.copytree(dataset, tmp_path / "ds"))


def _entries(root: pathlib.Path) -> list:
    return json.loads((root / zalo.ANNOTATIONS_FILE).read_text())


def _write(root: pathlib.Path, entries: list) -> None:
    (root / zalo.ANNOTATIONS_FILE).write_text(json.dumps(entries))


def _set_box(root: pathlib.Path, **values) -> dict:
    """Overwrite fields of VID's first box; returns the box as written."""
    entries = _entries(root)
    box = entries[0]["annotations"][0]["bboxes"][0]
    box.update(values)
    _write(root, entries)
    return box


def _load(root, **kw):
    records, report = zalo.load_dataset(root, **kw)
    return {r.video_id: r for r in records}, report


def _one(messages: list[str], *parts: str) -> str:
    """The single message containing all `parts`."""
    found = [m for m in messages if all(p in m for p in parts)]
    assert len(found) == 1, (parts, messages)
    return found[0]


def test_clean_dataset(dataset):
    records, report = _load(dataset)
    assert report.ok and not report.warnings, report.format()
    assert set(records) == {VID, OTHER}
    record = records[VID]
    assert (record.num_frames, record.height, record.width, record.fps) == (30, 96, 128, 25.0)
    assert [p.name for p in record.reference_paths] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    frames, boxes = record.box_arrays()
    assert frames.dtype == np.int64 and boxes.shape == (len(record.boxes), 4)
    assert report.num_annotated_frames == report.num_boxes == sum(len(r.boxes)
                                                                  for r in records.values())
    assert report.num_frames == 60 and report.num_negative_videos == 0


def test_cli_validate(dataset, copy, capsys):
    assert zalo.main(["validate", str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out
    assert zalo.main(["validate", str(dataset), "--no-video-check"]) == 0
    assert "header only" in capsys.readouterr().out
    (copy / "samples" / VID / zalo.VIDEO_FILE).unlink()
    assert zalo.main(["validate", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and f"samples/{VID}/drone_video.mp4: missing" in out


def test_missing_and_truncated_video(copy):
    mp4 = copy / "samples" / VID / zalo.VIDEO_FILE
    mp4.write_bytes(mp4.read_bytes()[:2000])
    records, report = _load(copy)
    _one(report.errors, f"samples/{VID}/drone_video.mp4", "truncated or corrupt")
    assert set(records) == {OTHER}  # the rest is kept
    mp4.unlink()
    records, report = _load(copy)
    _one(report.errors, f"samples/{VID}/drone_video.mp4: missing")
    assert set(records) == {OTHER} and report.num_sample_folders == 2


def test_missing_and_unreadable_references(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    (refs / "img_2.jpg").write_bytes(b"\xff\xd8 broken")
    records, report = _load(copy)
    _one(report.errors, f"samples/{VID}/object_images/img_2.jpg", "cannot read")
    assert [p.name for p in records[VID].reference_paths] == ["img_1.jpg", "img_3.jpg"]
    for p in refs.iterdir():
        p.unlink()
    records, report = _load(copy)
    _one(report.errors, f"samples/{VID}/object_images", "no reference photos")
    assert VID not in records
    refs.rmdir()
    _, report = _load(copy)
    _one(report.errors, f"samples/{VID}/object_images", "folder missing")


def test_gap_in_reference_numbering_names_the_missing_photo(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    (refs / "img_2.jpg").unlink()  # img_1.jpg and img_3.jpg are left
    records, report = _load(copy, check_videos=False)
    message = _one(report.errors, f"samples/{VID}/object_images/img_2.jpg: missing")
    assert "at least 3 reference photos" in message and "min_references" in message
    assert len(report.errors) == 1 and not report.warnings, report.format()
    # The rest of the video (and the other one) still loads, as with an unreadable photo.
    assert [p.name for p in records[VID].reference_paths] == ["img_1.jpg", "img_3.jpg"]
    assert len(records[OTHER].reference_paths) == 3
    # img_1..img_K must exist for min_references=K: still an error with K=2 ...
    _, report = _load(copy, check_videos=False, min_references=2)
    _one(report.errors, f"samples/{VID}/object_images/img_2.jpg: missing")
    # ... and only a warning about the gap with K=1.
    records, report = _load(copy, check_videos=False, min_references=1)
    assert report.ok, report.format()
    _one(report.warnings, f"samples/{VID}/object_images", "img_2.jpg missing", "gap")
    with pytest.raises(zalo.DatasetError, match=f"samples/{VID}/object_images/img_2.jpg"):
        zalo.load_dataset(copy, check_videos=False)[1].raise_if_errors()


def test_fewer_references_error_by_default_accepted_with_min_references(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    (refs / "img_3.jpg").unlink()
    records, report = _load(copy, check_videos=False)
    _one(report.errors, f"samples/{VID}/object_images/img_3.jpg: missing",
         "found img_1.jpg, img_2.jpg")
    assert len(report.errors) == 1, report.format()
    assert len(records[VID].reference_paths) == 2  # still returned, with the error
    records, report = _load(copy, check_videos=False, min_references=2)
    assert report.ok and not report.warnings, report.format()
    assert [p.name for p in records[VID].reference_paths] == ["img_1.jpg", "img_2.jpg"]
    assert report.num_references == 5
    (refs / "img_2.jpg").unlink()  # one photo left: K=2 reports img_2.jpg, K=1 accepts it
    _, report = _load(copy, check_videos=False, min_references=2)
    _one(report.errors, f"samples/{VID}/object_images/img_2.jpg: missing")
    assert all("img_3.jpg" not in m for m in report.errors)
    _, report = _load(copy, check_videos=False, min_references=1)
    assert report.ok and not report.warnings, report.format()
    with pytest.raises(ValueError, match="min_references must be an integer >= 1"):
        zalo.load_dataset(copy, min_references=0)


def test_reference_count_with_other_names_and_extensions(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    # Another accepted extension fills its number: img_2.png counts as img_2.
    Image.open(refs / "img_2.jpg").save(refs / "img_2.png")
    (refs / "img_2.jpg").unlink()
    _, report = _load(copy, check_videos=False)
    assert report.ok, report.format()
    assert all("missing" not in m for m in report.warnings)
    # Photos not named img_<k> are only counted.
    for k, name in ((1, "front.jpg"), (2, "side.png"), (3, "top.jpg")):
        (refs / f"img_{k}{'.png' if k == 2 else '.jpg'}").rename(refs / name)
    _, report = _load(copy, check_videos=False)
    assert report.ok, report.format()
    (refs / "top.jpg").unlink()
    records, report = _load(copy, check_videos=False)
    _one(report.errors, f"samples/{VID}/object_images: 2 reference photo(s)",
         "at least 3", "found front.jpg, side.png")
    assert len(records[VID].reference_paths) == 2
    _, report = _load(copy, check_videos=False, min_references=2)
    assert report.ok, report.format()


def test_gap_above_the_required_references_is_a_warning(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    shutil.copy(refs / "img_3.jpg", refs / "img_6.jpg")
    records, report = _load(copy, check_videos=False)
    assert report.ok, report.format()
    _one(report.warnings, f"samples/{VID}/object_images: img_4.jpg, img_5.jpg missing", "gap")
    assert [p.name for p in records[VID].reference_paths][-1] == "img_6.jpg"


def test_cli_min_references(copy, capsys):
    (copy / "samples" / VID / zalo.REFERENCES_DIR / "img_3.jpg").unlink()
    assert zalo.main(["validate", str(copy), "--no-video-check"]) == 1
    assert f"samples/{VID}/object_images/img_3.jpg: missing" in capsys.readouterr().out
    assert zalo.main(["validate", str(copy), "--no-video-check", "--min-references", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        zalo.main(["validate", str(copy), "--min-references", "0"])


def test_other_photo_modes_and_extensions(copy):
    refs = copy / "samples" / VID / zalo.REFERENCES_DIR
    Image.open(refs / "img_1.jpg").convert("L").save(refs / "img_1.jpg")
    Image.open(refs / "img_2.jpg").convert("CMYK").save(refs / "img_2.jpg")
    Image.open(refs / "img_3.jpg").convert("RGBA").save(refs / "img_10.png")
    Image.open(refs / "img_3.jpg").convert("P").save(refs / "img_4.png")
    shutil.copy(refs / "img_3.jpg", refs / "img_5.JPEG")
    records, report = _load(copy)
    assert report.ok, report.format()
    _one(report.warnings, f"samples/{VID}/object_images", "img_4.png, img_5.JPEG, img_10.png",
         "*.jpg")
    names = [p.name for p in records[VID].reference_paths]
    assert names == ["img_1.jpg", "img_2.jpg", "img_3.jpg", "img_4.png", "img_5.JPEG",
                     "img_10.png"]
    for path in records[VID].reference_paths:
        image = zalo.load_reference(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_malformed_json(copy):
    text = (copy / zalo.ANNOTATIONS_FILE).read_text()
    (copy / zalo.ANNOTATIONS_FILE).write_text('[\n  {"video_id": "synth_000",,\n' + text[1:])
    records, report = _load(copy)
    _one(report.errors, "annotations/annotations.json", "not valid JSON at line 2, column")
    assert set(records) == {VID, OTHER}  # videos and photos are still checked


@pytest.mark.parametrize("change,expected", [
    (lambda e: e[0].pop("video_id"), ["entry #0", "'video_id' missing"]),
    (lambda e: e[0].update(video_id=7), ["entry #0", "'video_id'", "int"]),
    (lambda e: e[0].pop("annotations"), [f"video '{VID}'", "'annotations' missing"]),
    (lambda e: e[0].update(annotations={"bboxes": []}), [f"video '{VID}'", "must be a list"]),
    (lambda e: e[0]["annotations"][0].pop("bboxes"), [f"video '{VID}'", "annotations[0].bboxes"]),
    (lambda e: e[0]["annotations"][0]["bboxes"][0].pop("x2"),
     [f"video '{VID}'", "annotations[0].bboxes[0]", "missing field(s) x2"]),
    (lambda e: e[0]["annotations"][0]["bboxes"][0].update(frame="3"),
     [f"video '{VID}'", "bboxes[0].frame' must be an integer", "str"]),
    (lambda e: e[0]["annotations"][0]["bboxes"][0].update(y1=None),
     [f"video '{VID}'", "field y1 must be a finite number", "null"]),
    (lambda e: e.__setitem__(0, {"video_id": VID, "detections": []}), ["submission file"]),
    (lambda e: e.append(["not", "an", "object"]), ["entry #2", "expected an object"]),
])
def test_json_field_errors(copy, change, expected):
    entries = _entries(copy)
    change(entries)
    _write(copy, entries)
    records, report = _load(copy, check_videos=False)
    _one(report.errors, "annotations/annotations.json", *expected)
    assert OTHER in records and records[OTHER].boxes  # other videos keep their boxes


def test_top_level_not_a_list(copy):
    (copy / zalo.ANNOTATIONS_FILE).write_text('{"video_id": "synth_000"}')
    _, report = _load(copy, check_videos=False)
    _one(report.errors, "top level must be a list", "dict")


def test_unknown_video_id(copy):
    _write(copy, _entries(copy) + [{"video_id": "Backpack_9", "annotations": []}])
    _, report = _load(copy, check_videos=False)
    _one(report.errors, "video 'Backpack_9' has no folder samples/Backpack_9/")


def test_video_without_entry_is_negative(copy):
    _write(copy, [e for e in _entries(copy) if e["video_id"] != VID])
    records, report = _load(copy)
    assert report.ok and not report.warnings, report.format()
    assert records[VID].is_negative and not records[OTHER].is_negative
    assert report.num_negative_videos == 1


def test_missing_annotations_file(copy):
    (copy / zalo.ANNOTATIONS_FILE).unlink()
    records, report = _load(copy, check_videos=False)
    assert report.ok
    _one(report.warnings, "annotations/annotations.json: missing")
    assert all(r.is_negative for r in records.values())


def test_missing_samples_folder(tmp_path):
    records, report = zalo.load_dataset(tmp_path)
    assert records == [] and not report.ok
    _one(report.errors, "samples/: folder missing")


def test_frame_beyond_video(copy):
    _set_box(copy, frame=30)
    records, report = _load(copy, check_videos=False)
    _one(report.errors, f"video '{VID}' frame 30", "has 30 frames (0..29)")
    assert 30 not in records[VID].boxes and records[VID].boxes


def test_inverted_box(copy):
    box = _set_box(copy, x2=5, x1=9)
    records, report = _load(copy, check_videos=False)
    _one(report.errors, f"video '{VID}' frame {box['frame']}", "x1=9", "x2=5", "x2 > x1")
    assert box["frame"] not in records[VID].boxes


def test_box_partly_and_entirely_outside(copy):
    box = _set_box(copy, x1=-6, y2=500)
    records, report = _load(copy, check_videos=False)
    assert report.ok
    _one(report.warnings, f"video '{VID}' frame {box['frame']}", "x1=-6", "clipped to 0 ")
    x1, y1, x2, y2 = records[VID].boxes[box["frame"]]
    assert x1 == 0 and y2 == 96 and (x2, y1) == (box["x2"], box["y1"])
    _set_box(copy, x1=130, x2=140)
    _, report = _load(copy, check_videos=False)
    _one(report.errors, f"video '{VID}' frame {box['frame']}", "entirely outside the 128x96")


def test_duplicate_frames_last_wins(copy):
    entries = _entries(copy)
    first = dict(entries[0]["annotations"][0]["bboxes"][0])
    moved = dict(first, x1=first["x1"] + 1)
    entries[0]["annotations"].append({"bboxes": [moved]})
    _write(copy, entries)
    records, report = _load(copy, check_videos=False)
    assert report.ok
    _one(report.warnings, f"video '{VID}' frame {first['frame']}", "later one is kept")
    assert records[VID].boxes[first["frame"]][0] == first["x1"] + 1


def test_report_format_limits_items(copy):
    entries = _entries(copy)
    for group in entries[0]["annotations"]:
        for box in group["bboxes"]:
            box["x2"] = box["x1"]
    _write(copy, entries)
    _, report = _load(copy, check_videos=False)
    text = report.format(max_items=2)
    assert len(report.errors) > 2 and f"... and {len(report.errors) - 2} more" in text
    with pytest.raises(zalo.DatasetError, match="FAILED"):
        report.raise_if_errors()
