"""Crash and NaN robustness, end to end: configs/tiny.py on 8 CPU devices.

`kill -9` inside a checkpoint save and `kill -9` mid-run: the resumed run ends on the parameters
of an uninterrupted run, bit for bit. An injected NaN batch is skipped, dumped and logged.
`--check` fails on a broken loss term and names it.

The runs are CLI subprocesses (`python -m jdet.train`), so SIGKILL hits a real training process.
One uninterrupted run from scratch is the reference (3 steps, a checkpoint per step); the other
runs start from a copy of its checkpoint 1, which skips the step-0 gradient check and the
train-state compilation (about a minute each on 2 CPU cores), and the two kills share one run
directory.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from jdet import checkpoint, train
from jdet.losses import TERM_NAMES
from jdet.training import steps
from jdet.training.run_log import read_jsonl

pytestmark = [pytest.mark.heavy(9), pytest.mark.xdist_group("tiny-run")]

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3  # configs/tiny.py: train.total_steps, with a checkpoint after every step
RUN_TIMEOUT_S = 900  # one subprocess; a cold compile cache takes up to ~6 min

# A driver that trains like `python -m jdet.train ARGS...` but dies by SIGKILL inside the save of
# checkpoint KILL_STEP: after the save has begun writing its temporary folder
# (<step>.orbax-checkpoint-tmp, renamed to <step> on commit) and before the commit. The save is
# asynchronous and its writes take far longer than this thread takes to reach os.kill.
# Usage: python -c DIE_IN_SAVE KILL_STEP ARGS...
DIE_IN_SAVE = """
import os, signal, sys, time
from jdet import checkpoint, train

kill_step = int(sys.argv.pop(1))
save = checkpoint.RunCheckpoints.save

def save_then_die(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == kill_step:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(f"{step}.") for p in self.directory.iterdir()):
            if time.monotonic() > deadline:
                sys.exit(f"checkpoint {step}: no temporary folder after 60 s")
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.RunCheckpoints.save = save_then_die
sys.argv[0] = "jdet.train"
sys.exit(train.main())
"""


def _env() -> dict[str, str]:
    """The test process's environment (8 CPU devices, from conftest) plus its compile cache."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        # jdet.training.optim builds its per-group transforms in set order, which follows the string
        # hash seed: a fixed seed gives every subprocess the same HLO, so the cache hits.
        "PYTHONHASHSEED": "0",
    }


def _train_args(workdir: pathlib.Path, *overrides: str) -> list[str]:
    # No validation video: these runs test checkpoints and skipped steps, and the evaluation
    # at the end of the run is tiny-run's (test_train.py) to test.
    no_eval = "--config.data.val_videos=0"
    return ["--config=configs/tiny.py", f"--workdir={workdir}", no_eval, *overrides]


def _cli(workdir: pathlib.Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "jdet.train", *_train_args(workdir, *overrides)]


def _run(cmd: list[str], log: pathlib.Path) -> tuple[int, str]:
    """Run to the end; (exit status, output). The output also goes to `log`."""
    with log.open("w") as f:
        proc = subprocess.run(
            cmd,
            check=False,
            cwd=ROOT,
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
    return proc.returncode, log.read_text()


def _train(workdir: pathlib.Path, *overrides: str) -> str:
    """`python -m jdet.train` to completion; its output."""
    log = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.log"
    rc, out = _run(_cli(workdir, *overrides), log)
    assert rc == 0, f"training exited with {rc}; end of {log}:\n{out[-4000:]}"
    return out


def _kill_when(cmd: list[str], ready, log: pathlib.Path, what: str) -> None:
    """Start `cmd`, poll `ready()` and SIGKILL the process as soon as it is true."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(
                        f"the run exited ({proc.returncode}) before {what}; end of {log}:\n"
                        + log.read_text()[-4000:]
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} after {RUN_TIMEOUT_S} s; see {log}")
                time.sleep(0.02)
        finally:
            proc.kill()  # SIGKILL: kill -9
            proc.wait()


def _committed(workdir: pathlib.Path) -> list[int]:
    """Committed checkpoint steps: orbax renames <step>.orbax-checkpoint-tmp to <step> last."""
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _state(workdir: pathlib.Path, step: int = STEPS) -> dict:
    """The checkpointed TrainState tree (step, params, batch_stats, opt_state, ...) on host."""
    manager = checkpoint.RunCheckpoints(workdir / "checkpoints", async_save=False)
    try:
        args = ocp.args.Composite(**{checkpoint.STATE: ocp.args.StandardRestore()})
        return jax.device_get(manager.manager.restore(step, args=args)[checkpoint.STATE])
    finally:
        manager.close()


def _assert_same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _start_from(reference: pathlib.Path, workdir: pathlib.Path, step: int = 1) -> pathlib.Path:
    """A new run directory holding a copy of the reference's checkpoint `step`."""
    src = reference / "checkpoints" / str(step)
    shutil.copytree(src, workdir / "checkpoints" / str(step))
    return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """An uninterrupted run from scratch: its directory and its final params."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _train(workdir)
    assert _committed(workdir) == [1, 2, 3]
    return workdir, _state(workdir)["params"]


@pytest.mark.slow
def test_sigkill_in_a_save_and_mid_run_then_resume_is_bit_identical(reference, tmp_path):
    """Three processes on one run directory, each resuming where the previous one died."""
    ref_dir, ref_params = reference
    workdir = _start_from(ref_dir, tmp_path / "run")
    folder = workdir / "checkpoints"

    # 1. kill -9 inside the save of checkpoint 2: checkpoint 1 stays the last committed one, the
    # interrupted save an uncommitted temporary folder.
    cmd = [sys.executable, "-c", DIE_IN_SAVE, "2", *_train_args(workdir)]
    rc, out = _run(cmd, tmp_path / "1_die_in_save.log")
    assert rc == -signal.SIGKILL, f"the driver exited with {rc}:\n{out[-4000:]}"
    assert _committed(workdir) == [1]
    assert [p.name for p in folder.iterdir() if p.name.startswith("2.")], "no interrupted save"

    # 2. The CLI resumes from checkpoint 1; kill -9 mid-run, once it has committed checkpoint 2.
    log = tmp_path / "2_killed_mid_run.log"
    _kill_when(_cli(workdir), lambda: 2 in _committed(workdir), log, "checkpoint 2 was committed")
    assert f"resumed from {folder} at step 1" in log.read_text()
    assert _committed(workdir) == [1, 2], "the kill should land before the last step's commit"

    # 3. The CLI resumes from checkpoint 2 and ends on the uninterrupted run's parameters.
    out = _train(workdir)
    assert f"resumed from {folder} at step 2" in out
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "3"]  # no temporary folder left
    _assert_same(_state(workdir)["params"], ref_params)


@pytest.mark.slow
@pytest.mark.deep  # 5 min: the deep profile (docs/testing.md §4)
def test_injected_nan_batch_is_skipped_dumped_and_logged(reference, tmp_path):
    ref_dir, _ = reference
    workdir = _start_from(ref_dir, tmp_path / "run")
    out = _train(workdir, "--config.debug.inject_nan_steps=1")

    # Logged: the skipped step's loss is "nan" and the skip counter stays at 1 after it.
    assert "step 1: non-finite loss or gradient" in out
    skipped, after = [r for r in read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r]
    assert (skipped["step"], skipped["train/loss"], skipped["train/skipped"]) == (2, "nan", 1)
    assert after["step"] == STEPS and np.isfinite(after["train/loss"])
    assert after["train/skipped"] == 1

    # Dumped: the batch as fed (NaN query, the rest intact) and the per-term culprits.
    dump = workdir / "nan_dump" / "step_00000001"
    with np.load(dump / "batch.npz") as batch:
        assert np.isnan(batch["query"]).all()
        assert np.isfinite(batch["support"]).all() and np.isfinite(batch["boxes"]).all()
    report = json.loads((dump / "report.json").read_text())
    assert report["step"] == 1 and not report["all_finite"]
    assert report["culprits"] and set(report["culprits"]) <= set(TERM_NAMES)
    for name in report["culprits"]:
        term = report["terms"][name]
        assert not (term["value_finite"] and term["grad_finite"]), name

    # Skipped: the step changed nothing but the counters; the next step trained on.
    before, at_skip, final = _state(workdir, 1), _state(workdir, 2), _state(workdir, STEPS)
    for part in ("params", "batch_stats", "wiou_state"):
        _assert_same(at_skip[part], before[part])
    assert int(final["step"]) == STEPS
    assert int(final["opt_state"]["total_notfinite"]) == 1
    counts = {  # the optimiser's update counters (Adam's, per parameter group)
        int(x)
        for path, x in jax.tree_util.tree_leaves_with_path(final["opt_state"])
        if jax.tree_util.keystr(path).endswith("['count']")
    }
    assert counts == {STEPS - 1}  # the skipped update was not applied
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final["params"]))


@pytest.mark.slow
@pytest.mark.deep  # 2 min: the deep profile (docs/testing.md §4)
def test_check_fails_and_names_a_non_finite_loss_term(reference, tmp_path, monkeypatch, capsys):
    broken_term = "supcon"
    loss_terms = steps.loss_terms  # what the --check statistics and gradient check call

    def broken_loss_terms(*args, **kwargs):
        # A NaN value with a finite derivative: no NaN leaks into the other terms' gradients,
        # so the check needs no second gradient program (tests/test_grads.py covers the leak).
        terms, aux = loss_terms(*args, **kwargs)
        return {**terms, broken_term: terms[broken_term] + jnp.nan}, aux

    monkeypatch.setattr(steps, "loss_terms", broken_loss_terms)
    # From the reference's checkpoint 1: --check then restores the state instead of compiling
    # its initialisation.
    workdir = _start_from(reference[0], tmp_path / "run")
    argv = ["jdet.train", f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={workdir}"]
    try:
        assert train.main([*argv, "--check"]) == 1
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    assert "check FAILED" in out
    assert re.search(rf"error: {broken_term} = (inf|nan) is not finite", out)
    assert f"NON-FINITE term(s): {broken_term}\n" in out  # the gradient table's verdict
    report = json.loads((workdir / "grad_report.json").read_text())
    bad = [n for n, t in report["terms"].items() if not (t["value_finite"] and t["grad_finite"])]
    assert bad == [broken_term] and not report["all_finite"]


@pytest.mark.parametrize("steps", ["", "3", "3,7", " 3, 7"])
def test_inject_nan_steps_accepts_step_lists(steps):
    from jdet.config import base_config, validate

    config = base_config()
    config.debug.inject_nan_steps = steps
    validate(config)


@pytest.mark.parametrize("steps", ["x", "3,", "-1", "3;7", "1.5"])
def test_inject_nan_steps_validation_names_field(steps):
    from jdet.config import base_config, validate

    config = base_config()
    config.debug.inject_nan_steps = steps
    with pytest.raises(ValueError, match="debug.inject_nan_steps"):
        validate(config)


def test_compile_counter_counts_inside_its_blocks_and_leaves_no_listener():
    """The trainer's recompile guard: compilations inside `with counter:` blocks add up, those
    outside do not count, and no jax.monitoring listener outlives a block."""
    from jax._src import monitoring

    from jdet.training.diagnostics import CompileCounter

    before = len(monitoring.get_event_duration_listeners())
    counter = CompileCounter()
    c = float(time.time_ns() % 1_000_003)  # new programs, never in the persistent cache
    with counter:
        jax.jit(lambda x: x * 3.0 + c)(np.float32(2.0))  # one compile
    jax.jit(lambda x: x - c)(np.float32(2.0))  # outside: not counted
    with counter:
        jax.jit(lambda x: x * 5.0 - c)(np.float32(2.0))
    assert counter.count == 2
    assert len(monitoring.get_event_duration_listeners()) == before
