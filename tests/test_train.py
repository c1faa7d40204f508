"""End to end: the tiny config through `jdet.train` / `train_and_evaluate` on 8 CPU devices.

One training run (3 steps, a checkpoint per step) is shared by the tests; the resume test
deletes its last two checkpoints and runs again, which must end on the same parameters.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from configs import tiny
from jdet import train, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = trainer.train_and_evaluate(tiny.get_config(), workdir)
    params = jax.device_get(result["state"].params)
    return workdir, result, params


@pytest.mark.slow
def test_tiny_run_writes_run_directory(run):
    workdir, result, _ = run
    assert result["step"] == 3 and not result["stopped"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "train/loss",
        "train/box_loss",
        "train/cls_loss",
        "train/dfl_loss",
        "train/supcon_loss",
        "train/cpe_loss",
        "train/triplet_loss",
        "lr",
        "grad_norm",
    ):
        assert np.isfinite(records[-1][key]), key
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
        "3",
    ]
    report = json.loads((workdir / "grad_report.json").read_text())
    assert report["all_finite"] and set(report["terms"]) == {
        "box",
        "cls",
        "dfl",
        "supcon",
        "cpe",
        "triplet",
    }
    assert json.loads((workdir / "config.json").read_text())["train"]["total_steps"] == 3
    assert {p.name for p in (workdir / "plots").iterdir()} == {"losses.png", "grad_norms.png"}
    assert list(workdir.glob("events.*"))


@pytest.mark.slow
def test_resume_is_bit_identical(run):
    workdir, _, params = run
    for step in ("2", "3"):
        shutil.rmtree(workdir / "checkpoints" / step)
    result = trainer.train_and_evaluate(tiny.get_config(), workdir)
    assert result["step"] == 3
    for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(jax.device_get(result["state"].params))
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_check_flag_exits_zero(tmp_path, capsys):
    argv = [
        "jdet.train",
        f"--config={ROOT / 'configs' / 'tiny.py'}",
        f"--workdir={tmp_path}",
        "--check",
    ]
    flags.FLAGS(argv)
    try:
        assert train.main(argv[:1]) == 0
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    assert "per-term gradient check" in out and "check passed" in out
    assert json.loads((tmp_path / "grad_report.json").read_text())["all_finite"]


def test_config_typo_fails_with_suggestion(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "jdet.train",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.train.total_step=5",
    ]
    proc = subprocess.run(
        cmd,
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode != 0
    assert "total_steps" in proc.stderr  # the suggestion
    assert not (tmp_path / "w").exists()  # failed before anything ran


def test_batch_not_divisible_by_devices(tmp_path):
    config = tiny.get_config()
    with config.unlocked():
        config.data.q_query = 2
        config.train.batch_size = 4  # one 2-way 2-query episode; 8 devices
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        trainer.train_and_evaluate(config, tmp_path)


def test_config_validation_names_field():
    from configs.common import base_config, validate

    config = base_config()
    config.train.batch_size = 6
    with pytest.raises(ValueError, match="train.batch_size"):
        validate(config)


@pytest.mark.parametrize(
    "stage,weights", [(1, (0.0, 0.0, 0.0)), (2, (1.2, 0.6, 0.3)), (3, (0.4, 0.6, 0.6))]
)
def test_refdet_n_stages(stage, weights):
    from configs import refdet_n

    config = refdet_n.get_config(f"stage={stage}")
    assert (config.loss.supcon, config.loss.cpe, config.loss.triplet) == weights
    assert config.optim.lr == (3e-5 if stage == 3 else 1e-4)
    assert config.optim.clip_norm == (10.0 if stage == 3 else 5.0)
    with pytest.raises(ValueError, match="stage=1\\|2\\|3"):
        refdet_n.get_config("stage=4")


def test_graft_copies_matching_leaves_under_prefix():
    from jdet.checkpoint import graft

    target = {
        "backbone": {"conv": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3)}},
        "head": {"w": np.zeros(2)},
    }
    source = {"conv": {"kernel": np.ones((3, 3)), "bias": np.ones(4)}, "extra": np.ones(1)}
    merged, copied, skipped = graft(target, source, "backbone")
    assert copied == 1 and sorted(skipped) == ["backbone/conv/bias", "backbone/extra"]
    np.testing.assert_array_equal(merged["backbone"]["conv"]["kernel"], np.ones((3, 3)))
    np.testing.assert_array_equal(merged["backbone"]["conv"]["bias"], np.zeros(3))
    np.testing.assert_array_equal(merged["head"]["w"], np.zeros(2))
