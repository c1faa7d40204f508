import os
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jdet.checkpoint import load_variables, save_variables
from jdet.models.convert import yolo_from_torch
from tests.helpers import FIXTURES


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
    from jdet.training.steps import TrainState

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


# ------------------------------------------------------------- damaged run checkpoints


def _tiny_state(value: float):
    """A TrainState of a few tiny arrays whose every leaf depends on `value`."""
    from jdet.losses.box import WIoUState
    from jdet.training.steps import TrainState

    return TrainState(
        step=jnp.array(int(value)),
        params={"w": jnp.full((2, 3), value), "b": jnp.full((3,), -value)},
        batch_stats={"m": jnp.full((3,), 10 * value)},
        opt_state={"mu": jnp.full((2, 3), value / 2)},
        wiou_state=WIoUState.init(),
        apply_fn=None,
        tx=None,
    )


def _save_steps(folder, steps):
    from jdet.checkpoint import RunCheckpoints

    manager = RunCheckpoints(folder, async_save=False)
    for step in steps:
        manager.save(step, _tiny_state(float(step)), {"position": step}, {"seed": 0})
    manager.wait()
    manager.close()


def _damage(step_dir, where: str, how: str) -> list:
    """Truncate to 0 bytes or delete the files of `step_dir` under `where` (a folder: every
    file in it; a file: that file). Returns the damaged paths."""
    target = step_dir / where
    files = sorted(p for p in target.iterdir() if p.is_file()) if target.is_dir() else [target]
    assert files and all(p.is_file() for p in files), f"nothing to damage at {target}"
    for path in files:
        if how == "truncate":
            path.write_bytes(b"")
        else:
            path.unlink()
    return files


# A failed orbax read leaves tensorstore callbacks on its closed event loop ("Event loop is
# closed", reported by pytest as unraisable): harmless, silenced in the tests that damage files.
_ORBAX_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# orbax (OCDBT) writes a step's arrays into checkpoints/<step>/state/d/<hash> (the merged
# data files; ocdbt.process_<i>/ holds the per-process copies before the merge) and the
# data-iterator state as JSON in checkpoints/<step>/data/metadata.
@_ORBAX_NOISE
@pytest.mark.parametrize(
    "where,how",
    [("state/d", "truncate"), ("state/d", "delete"), ("data/metadata", "truncate")],
)
def test_restore_falls_back_from_a_damaged_latest_checkpoint(tmp_path, where, how):
    from jdet.checkpoint import RunCheckpoints

    folder = tmp_path / "checkpoints"
    _save_steps(folder, [1, 2, 3])
    _damage(folder / "3", where, how)
    manager = RunCheckpoints(folder, async_save=False)
    try:
        assert manager.latest_step() == 3
        damaged = re.escape(str(folder / "3"))
        with pytest.warns(RuntimeWarning, match=f"{damaged}.*falling back.*step 2"):
            state, data_state, step = manager.restore(_tiny_state(0.0))
        assert step == 2 and manager.restored_step == 2 and data_state == {"position": 2}
        assert int(state.step) == 2
        np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 2.0))
        np.testing.assert_array_equal(state.params["b"], np.full((3,), -2.0))
        np.testing.assert_array_equal(state.batch_stats["m"], np.full((3,), 20.0))
        np.testing.assert_array_equal(state.opt_state["mu"], np.full((2, 3), 1.0))
        if where.startswith("state"):  # restore_params reads only the arrays
            with pytest.warns(RuntimeWarning, match=f"{damaged}.*damaged or unreadable"):
                variables = manager.restore_params()
            assert manager.restored_step == 2
            np.testing.assert_array_equal(variables["params"]["w"], np.full((2, 3), 2.0))
            np.testing.assert_array_equal(variables["batch_stats"]["m"], np.full((3,), 20.0))
    finally:
        manager.close()


def test_restore_of_an_intact_run_does_not_warn(tmp_path):
    from jdet.checkpoint import RunCheckpoints

    folder = tmp_path / "checkpoints"
    _save_steps(folder, [1, 2])
    manager = RunCheckpoints(folder, async_save=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            state, data_state, step = manager.restore(_tiny_state(0.0))
            assert (step, data_state, int(state.step)) == (2, {"position": 2}, 2)
            _, _, step = manager.restore(_tiny_state(0.0), step=1)  # an explicit step
            assert step == 1 and manager.restored_step == 1
    finally:
        manager.close()


@_ORBAX_NOISE
def test_restore_skips_several_damaged_checkpoints(tmp_path):
    from jdet.checkpoint import RunCheckpoints

    folder = tmp_path / "checkpoints"
    _save_steps(folder, [1, 2, 3])
    _damage(folder / "3", "state/d", "delete")
    _damage(folder / "2", "state/d", "truncate")
    manager = RunCheckpoints(folder, async_save=False)
    try:
        with pytest.warns(RuntimeWarning) as caught:
            state, _, step = manager.restore(_tiny_state(0.0))
    finally:
        manager.close()
    assert step == 1 and int(state.step) == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(str(folder / "3") in m and "step 2" in m for m in messages), messages
    assert any(str(folder / "2") in m and "step 1" in m for m in messages), messages


@_ORBAX_NOISE
def test_restore_when_no_checkpoint_can_be_read(tmp_path):
    from jdet.checkpoint import RunCheckpoints

    folder = tmp_path / "checkpoints"
    _save_steps(folder, [1, 2])
    for step in ("1", "2"):
        _damage(folder / step, "state/d", "truncate")
    manager = RunCheckpoints(folder, async_save=False)
    try:
        with (
            pytest.warns(RuntimeWarning, match="damaged or unreadable") as caught,
            pytest.raises(ValueError, match=f"{re.escape(str(folder))}: no checkpoint") as info,
        ):
            manager.restore(_tiny_state(0.0))
        assert "step 2:" in str(info.value) and "step 1:" in str(info.value)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 2 and "falling back to the previous checkpoint" in messages[0]
        assert str(folder / "1") in messages[1] and "no older checkpoint is left" in messages[1]
        with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match=re.escape(str(folder))):
            manager.restore_params()
    finally:
        manager.close()
    empty = RunCheckpoints(tmp_path / "empty", async_save=False)
    try:
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            empty.restore(_tiny_state(0.0))
    finally:
        empty.close()


@_ORBAX_NOISE
def test_load_run_falls_back_from_a_damaged_latest_checkpoint(tmp_path):
    """Inference (`load_run` -> restore_params) reads the previous checkpoint too."""
    from jdet.checkpoint import load_run

    _save_steps(tmp_path / "checkpoints", [1, 2])
    (tmp_path / "config.json").write_text('{"seed": 0}')
    _damage(tmp_path / "checkpoints" / "2", "state/d", "delete")
    with pytest.warns(RuntimeWarning, match=re.escape(str(tmp_path / "checkpoints" / "2"))):
        config, variables, _ = load_run(tmp_path)
    assert config.seed == 0
    np.testing.assert_array_equal(variables["params"]["w"], np.full((2, 3), 1.0))


@_ORBAX_NOISE
def test_damaged_checkpoint_set_aside_so_the_step_is_saved_again(tmp_path):
    from jdet.checkpoint import RunCheckpoints

    folder = tmp_path / "checkpoints"
    _save_steps(folder, [1, 2, 3])
    _damage(folder / "3", "state/d", "truncate")
    manager = RunCheckpoints(folder, async_save=False)
    try:
        with pytest.warns(RuntimeWarning, match="damaged or unreadable"):
            _, _, step = manager.restore(_tiny_state(0.0))
        assert step == 2
        assert manager.set_aside_after(step) == [folder / "3.damaged"]
        assert manager.latest_step() == 2
        manager.save(3, _tiny_state(7.0), {"position": 3}, {})  # orbax would skip it otherwise
        manager.wait()
        state, data_state, step = manager.restore(_tiny_state(0.0))
        assert step == 3 and data_state == {"position": 3}
        np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 7.0))
    finally:
        manager.close()
