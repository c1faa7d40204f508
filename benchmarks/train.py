"""Train-step throughput: jdet's jitted steps vs an ultralytics YOLOv8n step, with compile and RSS.

    python -m benchmarks train [--batch 8] [--image 320] [--repeats 5] [--boxes 4] [--episodes 1]
                               [--rows yolo,refdet,torch] [--torch-threads 0,1] [--no-torch]
    python -m benchmarks step [--batch 8] [--image 320] [--repeats 3] [--episodes 1]

Random images and random initialisation, batch B at S×S (default 8 at 320²). Each `train` row
runs in its own fresh process, so its compile numbers start from nothing and its peak RSS is its
own.

Rows (the steps are `benchmarks.steps.build_train_step`'s):
  jdet YOLOv8n, detection loss: the "yolo" step (YOLOv8n, 1 class, `LossConfig.ultralytics()`,
    ultralytics' gains box 7.5 / cls 0.5 / dfl 1.5, --boxes GT boxes per image, plain
    `optax.adamw` with torch.optim.AdamW's defaults), jitted with the state donated.
  jdet RefDet, stage-2 loss: the "refdet" step (YOLOv8n + DINOv3 ViT-S/16, 2-way 3-shot, B
    queries, 6 terms, `make_optimizer`: grouped AdamW, clipping, apply_if_finite). images/s
    counts query images.
  ultralytics YOLOv8n, v8DetectionLoss (only with torch + ultralytics, not --no-torch):
    `benchmarks.torch_side.ultralytics_step`: `DetectionModel("yolov8n.yaml", nc=1)`,
    `model.loss(batch)` on the same images' shape and the same boxes (normalised xywh),
    `torch.optim.AdamW()` (defaults), zero_grad / backward / step, eager; one row per
    --torch-threads value (default: torch's own thread count, printed in the row).

Columns:
  compile cold: trace + lower + XLA compile of the step (`jit(step).lower(...).compile()`) with
    an empty persistent compilation cache (a fresh temporary directory, min compile time 0).
  compile cached: the same again after `jax.clear_caches()`, served from that cache (what a
    restarted run pays); "(hit)" confirms the cache answered (jax.monitoring).
  step median, best: median and minimum wall time of --repeats steps after one untimed warm-up
    step; each is timed up to `block_until_ready` of its metrics, the only host sync. Under
    load from other processes the best step is the steadier number (torch's OpenMP threads
    suffer most from a busy core).
  images/s: B / median step.
  peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the row's process at its end
    (model init, both compiles and the steps included).
  recompiles: XLA compilations during the timed steps (`CompileCounter` of
    jdet.training.diagnostics); must be 0 (anything else is a compile per step, e.g. from a
    changing input type).
  loss: the weighted loss of the warm-up step → the last step (same gains for the two
    YOLOv8n rows: jdet's weighted total vs the sum of ultralytics' loss items), a sanity check
    that the steps train.

The last lines are jdet YOLOv8n images/s ÷ ultralytics images/s from the same run (medians and
best steps), one per ultralytics row. The machine is shared and noisy: compare rows of one
run, not runs; load averages are printed.

`step`: the RefDet step alone, in this process: compile + first step, median step, query
images/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile

from benchmarks.proc import run_in_child, spec_of
from benchmarks.steps import build_train_step
from benchmarks.timing import time_call

ROWS = {
    "yolo": "jdet YOLOv8n, detection loss",
    "refdet": "jdet RefDet (YOLOv8n + DINOv3 ViT-S/16), stage-2 loss",
    "torch": "ultralytics YOLOv8n, v8DetectionLoss",
}
CACHE_HITS = "/jax/compilation_cache/cache_hits"  # jax.monitoring event


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row")
    parser.add_argument("--boxes", type=int, default=4, help="GT boxes per image (YOLOv8n rows)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=1,
        help="RefDet support_groups: episodes per batch sharing a support set (0: per query)",
    )
    parser.add_argument(
        "--rows", default="yolo,refdet,torch", help="comma-separated: yolo, refdet, torch"
    )
    parser.add_argument(
        "--torch-threads",
        default="0",
        help="comma-separated torch thread counts, one ultralytics row each (0: torch's default)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the ultralytics rows")


def _measure_jdet(model: str, args, cache_dir: str) -> dict:
    """Compile cold and cached, then time the jitted step (in a row's own process)."""
    import jax
    from jax import monitoring

    from jdet.training.diagnostics import CompileCounter

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    hits = [0]

    def on_event(event: str, **_) -> None:
        hits[0] += event == CACHE_HITS

    monitoring.register_event_listener(on_event)
    try:
        case = build_train_step(
            model, batch=args.batch, image=args.image, boxes=args.boxes, episodes=args.episodes
        )
        cold = time_call(lambda: case.lower().compile(), 0, sync=None).first_s
        hits_before = hits[0]
        jax.clear_caches()
        cached = time_call(lambda: case.lower().compile(), 0, sync=None).first_s
        cache_hit = hits[0] > hits_before
    finally:
        monitoring.unregister_event_listener(on_event)

    jax.block_until_ready(case.run())  # warm-up: the jit call path, untimed
    recompiles = CompileCounter()
    with recompiles:
        timing = time_call(case.run, args.repeats, warmup=False)
    jax.block_until_ready(case.state)
    return {
        "compile_cold_s": cold,
        "compile_cached_s": cached,
        "cache_hit": cache_hit,
        "step_s": timing.median_s,
        "best_s": timing.best_s,
        "images": case.images,
        "recompiles": recompiles.count,
        "loss_first": float(case.first_metrics["loss"]),
        "loss_last": float(case.metrics["loss"]),
        "backend": f"jax {jax.__version__} ({jax.devices()[0].platform})",
    }


def _measure_torch(args, threads: int) -> dict:
    """`ultralytics_step` timed (in a row's own process; jax is never imported)."""
    import torch

    from benchmarks.torch_side import ultralytics_step

    if threads > 0:
        torch.set_num_threads(threads)
    step = ultralytics_step(args.batch, args.image, args.boxes)
    first = step()  # warm-up, untimed
    timing = time_call(step, args.repeats, warmup=False, sync=None)
    return {
        "step_s": timing.median_s,
        "best_s": timing.best_s,
        "images": args.batch,
        "loss_first": first,
        "loss_last": timing.last,
        "threads": torch.get_num_threads(),
        "backend": f"torch {torch.__version__}",
    }


def measure_row(args) -> dict:
    """One row (args.row: "yolo", "refdet" or "torch:THREADS") measured in this process: the
    child side of `run_row`."""
    with tempfile.TemporaryDirectory(prefix="jdet-cc-") as cache_dir:
        if args.row.startswith("torch:"):
            return _measure_torch(args, int(args.row.split(":")[1]))
        return _measure_jdet(args.row, args, cache_dir)


def run_row(row: str, args) -> dict:
    """Run one row in a fresh Python process; its result, or {"error": last stderr lines}."""
    return run_in_child("train", {**spec_of(args), "row": row})


def _label(row: str, result: dict) -> str:
    if not row.startswith("torch:"):
        return ROWS[row]
    threads = result.get("threads", row.split(":")[1])
    plural = "" if str(threads) == "1" else "s"
    return f"{ROWS['torch']} ({threads} thread{plural}{', default' if row == 'torch:0' else ''})"


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "ultralytics"))


def bench_train(args) -> None:
    """Print the train-step table for `args` (see `add_arguments`)."""
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown --rows {unknown}; choose from {sorted(ROWS)}")
    notes = []
    if "torch" in rows:
        rows.remove("torch")
        if args.no_torch:
            notes.append("ultralytics rows skipped (--no-torch)")
        elif not torch_available():
            notes.append(
                'ultralytics rows skipped: no torch/ultralytics (pip install -e ".[convert]")'
            )
        else:
            rows += [f"torch:{int(t)}" for t in args.torch_threads.split(",") if t]
    load_before = os.getloadavg()
    # The YOLOv8n rows run back to back so that their ratios see the same machine load.
    order = sorted(rows, key=lambda r: (r == "refdet", r))
    results = {row: run_row(row, args) for row in order}
    load_after = os.getloadavg()

    print(
        f"train-step benchmark: batch {args.batch} at {args.image}², {args.boxes} GT boxes per "
        f"image (RefDet: 1), median of {args.repeats} steps after one warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        "peak RSS per row (each row is its own process)"
    )
    backends = sorted({r["backend"] for r in results.values() if "backend" in r})
    print("; ".join(backends + notes))
    print()
    print(
        "| row | compile cold (s) | compile cached (s) | step median (ms) | step best (ms) "
        "| images/s | peak RSS (MiB) | recompiles | loss first → last |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        r = results[row]
        if "error" in r:
            print(f"| {_label(row, r)} | failed: {r['error']} ||||||||")
            continue
        cold = f"{r['compile_cold_s']:.1f}" if "compile_cold_s" in r else "— (eager)"
        cached = (
            f"{r['compile_cached_s']:.1f}" + (" (hit)" if r["cache_hit"] else " (MISS)")
            if "compile_cached_s" in r
            else "—"
        )
        recompiles = str(r["recompiles"]) if "recompiles" in r else "—"
        print(
            f"| {_label(row, r)} | {cold} | {cached} | {r['step_s'] * 1e3:.0f} | "
            f"{r['best_s'] * 1e3:.0f} | {r['images'] / r['step_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {recompiles} | "
            f"{r['loss_first']:.3g} → {r['loss_last']:.3g} |"
        )
    jdet = results.get("yolo", {})
    if "error" not in jdet and jdet:
        print()
        for row in rows:
            r = results[row]
            if row.startswith("torch:") and "error" not in r:
                print(
                    f"jdet YOLOv8n images/s ÷ {_label(row, r)} images/s: "
                    f"{r['step_s'] / jdet['step_s']:.2f}× from the medians, "
                    f"{r['best_s'] / jdet['best_s']:.2f}× from the best steps (same run)"
                )


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--episodes",
        type=int,
        default=1,
        help="support_groups: episodes per batch sharing a support set (0: per query)",
    )


def bench_step(args) -> None:
    """Full RefDet train step (YOLOv8n + DINOv3 ViT-S/16, 6 terms, AdamW) on random data."""
    import jax

    case = build_train_step("refdet", batch=args.batch, image=args.image, episodes=args.episodes)
    timing = time_call(case.run, args.repeats)
    print(f"{case.description}; jax {jax.__version__} ({jax.devices()[0].platform})")
    print()
    print("| compile + first step (s) | step (s) | query images/s |")
    print("|---:|---:|---:|")
    print(f"| {timing.first_s:.1f} | {timing.median_s:.2f} | {case.images / timing.median_s:.1f} |")
