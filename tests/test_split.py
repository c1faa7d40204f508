"""Leave-objects-out splits (jdet.data.split) of a challenge-layout folder."""

import json

import pytest

from jdet.data import split
from jdet.data.zalo import ANNOTATIONS_FILE


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    ids = ["Tower_0", "Tower_1", "Boxes_0", "Clock_0", "Clock_12", "Life_Jacket_3"]
    for v in ids:
        (root / "samples" / v / "object_images").mkdir(parents=True)
    (root / ANNOTATIONS_FILE).parent.mkdir()
    entries = [{"video_id": v, "annotations": [{"bboxes": []}]} for v in ids if v != "Boxes_0"]
    (root / ANNOTATIONS_FILE).write_text(json.dumps(entries))
    return root


def test_object_of_strips_the_video_number():
    assert split.object_of("Clock_12") == "Clock"
    assert split.object_of("Life_Jacket_3") == "Life_Jacket"
    assert split.object_of("Backpack") == "Backpack"


def test_split_holds_whole_objects_out(src, tmp_path):
    out = tmp_path / "fold"
    got = split.split_by_object(src, out, ["Tower", "Life_Jacket"])
    assert got == {
        "train": ["Boxes_0", "Clock_0", "Clock_12"],
        "val": ["Life_Jacket_3", "Tower_0", "Tower_1"],
    }
    for name, videos in got.items():
        assert sorted(p.name for p in (out / name / "samples").iterdir()) == videos
        assert (out / name / "samples" / videos[0] / "object_images").is_dir()  # a link
        ann = json.loads((out / name / ANNOTATIONS_FILE).read_text())
        assert [e["video_id"] for e in ann] == [v for v in videos if v != "Boxes_0"]
    # Again with other objects: the old links go.
    split.split_by_object(src, out, ["Clock"])
    assert sorted(p.name for p in (out / "val" / "samples").iterdir()) == ["Clock_0", "Clock_12"]
    assert split.objects(out / "train") == ["Boxes", "Life_Jacket", "Tower"]


def test_unknown_object_is_named(src, tmp_path, capsys):
    with pytest.raises(ValueError, match="no video of object.s. Chiar"):
        split.split_by_object(src, tmp_path / "fold", ["Chiar"])
    assert split.main(["--src", str(src), "--holdout", "Chiar", "--out", str(tmp_path)]) == 2
    assert "Boxes, Clock, Life_Jacket, Tower" in capsys.readouterr().err
