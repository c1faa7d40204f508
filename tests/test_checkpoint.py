import numpy as np
import pytest
from flax import traverse_util

from jdet.checkpoint import load_variables, save_variables
from jdet.models.convert import yolo_from_torch
from tests.conftest import FIXTURES


def test_converted_weights_roundtrip(tmp_path):
    f = np.load(FIXTURES / "yolo_tiny.npz")
    variables = yolo_from_torch({k[3:]: f[k] for k in f.files if k.startswith("sd/")}, "t", 3)
    out = save_variables(tmp_path / "w", variables, {"kind": "yolo", "scale": "t", "num_classes": 3})
    loaded, meta = load_variables(out)
    assert meta["kind"] == "yolo" and meta["counts"]["params"] > 0
    want, got = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(loaded)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
    with pytest.raises(FileExistsError, match="already exists"):
        save_variables(out, variables, {})


def test_load_variables_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_weights.py"):
        load_variables(tmp_path)
