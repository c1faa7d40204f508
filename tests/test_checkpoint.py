import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jdet.checkpoint import load_variables, save_variables
from jdet.models.convert import yolo_from_torch
from tests.conftest import FIXTURES


def test_converted_weights_roundtrip(tmp_path):
    f = np.load(FIXTURES / "yolo_tiny.npz")
    variables = yolo_from_torch({k[3:]: f[k] for k in f.files if k.startswith("sd/")}, "t", 3)
    out = save_variables(
        tmp_path / "w", variables, {"kind": "yolo", "scale": "t", "num_classes": 3}
    )
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
    assert (
        cli.main([str(FIXTURES / "dinov3_tiny.safetensors"), "--kind", "dinov3", "--out", str(out)])
        == 0
    )
    variables, meta = load_variables(out)
    assert meta["kind"] == "dinov3" and meta["variant"] == "dinov3-tiny"
    assert meta["counts"]["params"] > 0 and "params" in variables
    # A missing source and a .safetensors without --kind are usage errors (exit 2).
    assert cli.main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 2
    assert cli.main([str(FIXTURES / "dinov3_tiny.safetensors"), "--out", str(tmp_path / "y")]) == 2
    assert "--kind" in capsys.readouterr().err


def test_init_from_a_run_saved_on_another_device_count(tmp_path):
    """config.init reads a run checkpoint saved on 8 devices in a 1-device process (restoring
    without a target would reuse the saved shardings: "Topology mismatch")."""
    import subprocess
    import sys

    from jdet.checkpoint import RunCheckpoints
    from jdet.losses.box import WIoUState
    from jdet.steps import TrainState

    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    repl = jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = TrainState(
        step=jax.device_put(jnp.array(3), repl),
        params={"w": jax.device_put(jnp.arange(6.0).reshape(2, 3), repl)},
        batch_stats={"m": jax.device_put(jnp.ones(3), repl)},
        opt_state={},
        wiou_state=jax.device_put(WIoUState.init(), repl),
        apply_fn=None,
        tx=None,
    )
    manager = RunCheckpoints(tmp_path / "checkpoints", async_save=False)
    manager.save(3, state, {"position": 0}, {"seed": 0})
    manager.wait()
    manager.close()
    code = (
        "import jax; from jdet.checkpoint import load_init_variables; "
        f"v, _ = load_init_variables({str(tmp_path)!r}); "
        "assert jax.device_count() == 1; print(v['params']['w'].sum(), v['batch_stats']['m'].sum())"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["15.0", "3.0"]
