"""`python -m benchmarks all` (benchmarks/suite.py, peak.py, flops.py): the pieces, in seconds.

The end-to-end `python -m benchmarks all --quick` compiles several train steps (minutes on this
CPU), so it stays out of the suite; here: the peak kernels at tiny sizes, XLA's FLOP count,
every child's command line against its parser, the one timer, the ultralytics loss items of
both ultralytics lines, the command line, and the table from a synthetic result.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops, peak, steps, suite, timing, torch_side
from benchmarks.__main__ import COMMANDS, MEASURES


def _args(add_arguments, argv=()):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_peak_tiny_kernels_positive():
    result = peak.measure_peak(_args(peak.add_arguments, ["--quick", "--repeats", "1"]))
    names = [k["name"] for k in result["kernels"]]
    assert any(n.startswith("matmul") for n in names) and any(n.startswith("conv") for n in names)
    assert all(k["gflops"] > 0 and k["median_s"] > 0 for k in result["kernels"])
    assert all(k["gflops_best"] >= k["gflops"] for k in result["kernels"])
    assert result["peak_gflops"] == max(k["gflops"] for k in result["kernels"])


def test_xla_flops_of_a_matmul():
    a = jnp.ones((64, 32))
    lowered = jax.jit(jnp.matmul).lower(a, a.T)
    for stage in (lowered, lowered.compile()):
        assert flops.xla_flops(stage) == pytest.approx(2 * 64 * 32 * 64, rel=0.1)


@pytest.mark.parametrize("quick", [False, True])
def test_every_child_parses_its_command_line(quick):
    argvs = suite.argvs(_args(suite.add_arguments, ["--quick"] if quick else []))
    assert set(argvs) == set(suite.CHILDREN) | {"train"}
    # every child kind of `all` has a measure function; "peer" runs only on its own command
    # (it needs the original's source, --zalo-src)
    assert set(MEASURES) == set(argvs) | {"peer"}
    for kind, argv in argvs.items():
        suite.child_args(kind, argv)  # exits on an unknown option


def test_every_command_parses_its_defaults():
    assert {"all", "losses", "train", "infer", "data", "peak", "profile"} <= set(COMMANDS)
    for name, (_, add_arguments, _) in COMMANDS.items():
        _args(add_arguments, ["parts"] if name == "profile" else [])


def test_timer_interleaves_and_keeps_the_last_result():
    calls = []
    timings = timing.time_calls(
        {"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b")},
        2,
        sync=None,
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up round, then 2 interleaved rounds
    assert timings["a"].last == 5 and len(timings["a"].times) == 2
    assert timings["b"].first_s is not None and timings["b"].best_s <= timings["b"].median_s
    single = timing.time_call(lambda: jnp.ones(3), 0)
    assert single.times == () and single.first_s > 0 and single.last.shape == (3,)


def test_step_builder_layer_variants():
    impl = steps.layer_impl("xla", "fast-maxpool-s2grad")
    assert (impl.conv, impl.fast, impl.fast_off) == ("xla", True, ("maxpool", "s2grad"))
    assert not steps.layer_impl(None, "plain").fast
    for bad in ("slow", "plain-maxpool"):
        with pytest.raises(ValueError):
            steps.layer_impl(None, bad)
    with pytest.raises(ValueError):
        steps.build_train_step("resnet")


def test_ultralytics_loss_items_tensor_or_dict():
    # ultralytics ≤ 8.3: loss.detach() ([box, cls, dfl]); 8.4: a dict of named loss items
    assert torch_side.loss_items_total(np.array([1.0, 2.0, 0.5])) == 3.5
    items = {"box": np.array(1.0), "cls": np.array([2.0]), "dfl": 0.5}
    assert torch_side.loss_items_total(items) == 3.5


def _train(step_s, **extra):
    return {"step_s": step_s, "best_s": step_s * 0.9, "images": 8, "peak_rss_mib": 1500.0, **extra}


def _results(**overrides):
    compile_ = {"compile_cold_s": 30.0, "compile_cached_s": 3.0, "cache_hit": True}
    results = {
        "machine": {"cpu": "Test CPU", "cores": 2, "jax": "0.0", "jaxlib": "0.0", "torch": "2.0"},
        "quick": False,
        "batch": 8,
        "image": 320,
        "load_start": 1.0,
        "load_end": 2.0,
        "skipped": {},
        "train": {
            "yolo": _train(0.4, **compile_, new_key="ignored"),
            "torch": _train(0.6, threads=2),
            "refdet": _train(4.0, **compile_),
        },
        "losses": {
            "rows": [{"median_s": t} for t in (0.001, 0.002, 0.003, 0.01, 0.03, 0.02, 0.025)],
            "num_terms": 6,
            "one_backward_s": 0.01,
            "per_term_ratio": 3.0,
            "peak_rss_mib": 900.0,
        },
        "data": {
            "rows": [
                {"workers": w, "images_per_s": 50.0, "main_rss_mib": 400.0, "worker_rss_mib": 300.0}
                for w in (0, 2)
            ]
        },
        "infer": {
            "rows": [{"size": 320, "compile_s": 20.0, "fps_cached": 9.0, "fps_recomputed": 8.0}],
            "peak_rss_mib": 1100.0,
        },
        "peak": {
            "kernels": [
                {"name": "matmul 2048", "gflops": 100.0},
                {"name": "conv 3×3", "gflops": 60.0},
            ],
            "peak_gflops": 100.0,
            "peak_rss_mib": 300.0,
        },
        "flops": {
            r: {"flops": f, "source": "`compiled`"} for r, f in [("yolo", 4.5e10), ("refdet", 6e11)]
        },
    }
    return results | overrides


def _table(text):
    """{measurement: value} of the Markdown table's body."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines[1:]}


def test_table_has_every_row_with_positive_numbers():
    text = suite.format_table(_results())
    rows = _table(text)
    expected = [
        "train step, jdet YOLOv8n (images/s)",
        "train step, ultralytics YOLOv8n (images/s)",
        "train step, jdet RefDet (query images/s)",
        "compile cold, jdet YOLOv8n step (s)",
        "compile cached, jdet YOLOv8n step (s)",
        "compile cold, jdet RefDet step (s)",
        "compile cached, jdet RefDet step (s)",
        "per_term_grads (6 terms, vmap) ÷ one backward",
        "data pipeline, 0 workers (query images/s)",
        "data pipeline, 2 workers (query images/s)",
        "inference, jdet.predict 640×360 video at 320² (frames/s)",
        "float32 peak, XLA matmul (GFLOP/s)",
        "float32 peak, XLA 3×3 conv (GFLOP/s)",
        "achieved, jdet YOLOv8n step, XLA FLOPs¹ (GFLOP/s)",
        "achieved, jdet YOLOv8n step, nominal FLOPs² (GFLOP/s)",
        "achieved, ultralytics YOLOv8n step, nominal FLOPs² (GFLOP/s)",
        "achieved, jdet RefDet step, XLA FLOPs¹ (GFLOP/s)",
    ]
    assert sorted(rows) == sorted(expected)
    assert all(float(v.rstrip("×")) > 0 for v in rows.values())
    assert rows["train step, jdet YOLOv8n (images/s)"] == "20.0"
    assert "1.50× ultralytics" in text and "112.5% of peak" in text  # 45 GFLOP / 0.4 s
    assert "Test CPU, 2 cores" in text and "load average 1.0 at start, 2.0 at end" in text


def test_table_reports_skipped_and_failed_rows():
    results = _results(skipped={"torch": "--no-torch"}, losses={"error": "exit 1: boom"})
    del results["train"]["torch"]
    rows = _table(suite.format_table(results))
    assert rows["train step, ultralytics YOLOv8n (images/s)"] == "skipped"
    assert rows["per_term_grads ÷ one backward"] == "failed"
    assert "achieved, ultralytics YOLOv8n step, nominal FLOPs² (GFLOP/s)" not in rows
