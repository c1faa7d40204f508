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


def test_convert_weights_cli_on_hf_safetensors(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_weights", FIXTURES.parent.parent / "scripts" / "convert_weights.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "w"
    assert cli.main([str(FIXTURES / "dinov3_tiny.safetensors"), "--kind", "dinov3", "--out", str(out)]) == 0
    variables, meta = load_variables(out)
    assert meta["kind"] == "dinov3" and meta["variant"] == "dinov3-tiny"
    assert meta["counts"]["params"] > 0 and "params" in variables
    # A missing source and a .safetensors without --kind are usage errors (exit 2).
    assert cli.main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 2
    assert cli.main([str(FIXTURES / "dinov3_tiny.safetensors"), "--out", str(tmp_path / "y")]) == 2
    assert "--kind" in capsys.readouterr().err
