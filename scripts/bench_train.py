"""Train-step throughput: jdet's jitted steps vs an ultralytics YOLOv8n step, with compile and RSS.

    python3 scripts/bench.py train [--batch 8] [--image 320] [--repeats 5] [--no-torch]
                                   [--torch-threads 0,1] [--rows yolo,refdet,torch]
    python3 scripts/bench_train.py [same options]

Random images and random initialisation, batch B at S×S (default 8 at 320²). Each row runs in
its own fresh process, so its compile numbers start from nothing and its peak RSS is its own.

Rows:
  jdet YOLOv8n, detection loss: `YOLOv8("n", num_classes=1)`'s raw head outputs flattened to
    what `loss_terms` reads (dist [B, A, 4, 16], cls [B, A, 1], anchors, strides) with
    `LossConfig.ultralytics()` (16 bins averaged over sides, 1 − CIoU, TAL top-10) and gains
    box 7.5 / cls 0.5 / dfl 1.5 (ultralytics' defaults), --boxes GT boxes per image;
    `jdet.steps.train_step` with plain `optax.adamw` (torch.optim.AdamW's defaults: lr 1e-3,
    weight decay 0.01 on every parameter), jitted with the state donated.
  jdet RefDet, stage-2 loss: `bench.py`'s `refdet_train_step` (the `step` subcommand's setup):
    YOLOv8n + DINOv3 ViT-S/16, 2-way 3-shot, B queries, 6 terms, `make_optimizer` (grouped
    AdamW, clipping, apply_if_finite). images/s counts query images.
  ultralytics YOLOv8n, v8DetectionLoss (only with torch + ultralytics, not --no-torch):
    `DetectionModel("yolov8n.yaml", nc=1)`, `model.loss(batch)` on the same images' shape and
    the same boxes (normalised xywh), `torch.optim.AdamW()` (defaults),
    zero_grad / backward / step, eager; one row per --torch-threads value (default: torch's
    own thread count, torch.get_num_threads(), printed in the row).

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
  recompiles: XLA compilations (jax.monitoring backend-compile events) during the timed
    steps; must be 0 (anything else is a compile per step, e.g. from a changing input type).
  loss: the weighted loss of the warm-up step → the last step (same gains for the two
    YOLOv8n rows: jdet's weighted total vs ultralytics' `loss_items.sum()`), a sanity check
    that the steps train.

The last lines are jdet YOLOv8n images/s ÷ ultralytics images/s from the same run (medians and
best steps), one per ultralytics row. The machine is shared and noisy: compare rows of one
run, not runs; load averages are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

YOLO_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics' default hyperparameters
ROWS = {
    "yolo": "jdet YOLOv8n, detection loss",
    "refdet": "jdet RefDet (YOLOv8n + DINOv3 ViT-S/16), stage-2 loss",
    "torch": "ultralytics YOLOv8n, v8DetectionLoss",
}


def _gt_boxes(batch: int, image: int, num_boxes: int) -> np.ndarray:
    """[B, M, 4] f32 xyxy pixel boxes, fixed seed (the same for jdet and ultralytics)."""
    rng = np.random.default_rng(0)
    wh = rng.uniform(16, image / 3, (batch, num_boxes, 2))
    xy = rng.uniform(0, 1, (batch, num_boxes, 2)) * (image - wh)
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _yolo_train_step(args):
    """(jitted donated step, state, batch, rng): YOLOv8n + detection loss, plain AdamW."""
    import functools

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jdet.boxes import make_anchors
    from jdet.losses import LossConfig
    from jdet.models.yolo import STRIDES, YOLOv8
    from jdet.steps import create_train_state, train_step

    class QueryDetector(nn.Module):
        """YOLOv8 raw head maps → the outputs dict `loss_terms` reads."""

        @nn.compact
        def __call__(self, batch, train: bool = False):
            yolo = YOLOv8("n", num_classes=1, name="yolo")
            maps = yolo(batch["query"], train)
            bsz, bins = maps[0].shape[0], yolo.reg_max
            flat = jnp.concatenate([m.reshape(bsz, -1, m.shape[-1]) for m in maps], axis=1)
            anchors, strides = make_anchors([m.shape[1:3] for m in maps], STRIDES)
            return {
                "dist": flat[..., : 4 * bins].reshape(bsz, -1, 4, bins),
                "cls": flat[..., 4 * bins :],
                "anchors": anchors,
                "strides": strides,
            }

    boxes = _gt_boxes(args.batch, args.image, args.boxes)
    batch = {
        "query": jax.random.uniform(jax.random.PRNGKey(0), (args.batch, args.image, args.image, 3)),
        "boxes": jnp.asarray(boxes),
        "labels": jnp.zeros(boxes.shape[:2], jnp.int32),
        "box_mask": jnp.ones(boxes.shape[:2], bool),
    }
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    state = create_train_state(QueryDetector(), tx, jax.random.PRNGKey(0), batch)
    step = functools.partial(train_step, loss_weights=YOLO_GAINS, loss_cfg=LossConfig.ultralytics())
    return jax.jit(step, donate_argnums=0), state, batch, jax.random.PRNGKey(1)


def _run_jdet(row: str, args, cache_dir: str) -> dict:
    """Child process: compile cold and cached, then time the jitted step."""
    import collections

    import jax
    from jax import monitoring

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    events: collections.Counter = collections.Counter()
    monitoring.register_event_listener(lambda event, **_: events.update([event]))
    monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **_: events.update(
            ["compile"] if event.endswith("backend_compile_duration") else []
        )
    )
    if row == "yolo":
        step, state, batch, rng = _yolo_train_step(args)
    else:
        from bench import refdet_train_step

        step, state, batch, rng, _ = refdet_train_step(args)
    start = time.perf_counter()
    step.lower(state, batch, rng).compile()
    cold = time.perf_counter() - start
    hits = events["/jax/compilation_cache/cache_hits"]
    jax.clear_caches()
    start = time.perf_counter()
    step.lower(state, batch, rng).compile()
    cached = time.perf_counter() - start
    cache_hit = events["/jax/compilation_cache/cache_hits"] > hits

    state, first = step(state, batch, rng)  # warm-up: the jit call path, untimed
    jax.block_until_ready(first)
    compiles = events["compile"]
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    recompiles = events["compile"] - compiles
    jax.block_until_ready(state)
    images = batch["query"].shape[0]
    return {
        "compile_cold_s": cold,
        "compile_cached_s": cached,
        "cache_hit": cache_hit,
        "step_s": statistics.median(times),
        "best_s": min(times),
        "images": images,
        "recompiles": recompiles,
        "loss_first": float(first["loss"]),
        "loss_last": float(metrics["loss"]),
        "backend": f"jax {jax.__version__} ({jax.devices()[0].platform})",
    }


def ultralytics_step(args):
    """step() → loss: one ultralytics YOLOv8n + v8DetectionLoss + torch AdamW step, eager, on
    random images with `_gt_boxes` (args: batch, image, boxes)."""
    import types

    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    model.args = types.SimpleNamespace(**YOLO_GAINS)  # what the trainer attaches (hyp gains)
    model.train()
    model.criterion = model.init_criterion()
    optimizer = torch.optim.AdamW(model.parameters())
    boxes = _gt_boxes(args.batch, args.image, args.boxes).reshape(-1, 4) / args.image
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], -1)
    batch = {
        "img": torch.rand(args.batch, 3, args.image, args.image),
        "batch_idx": torch.arange(args.batch).repeat_interleave(args.boxes).float(),
        "cls": torch.zeros(len(xywh), 1),
        "bboxes": torch.from_numpy(xywh),
    }

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, items = model.loss(batch)
        loss.sum().backward()
        optimizer.step()
        return float(items.sum())

    return step


def _run_torch(args, threads: int) -> dict:
    """Child process: `ultralytics_step` timed."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    step = ultralytics_step(args)
    first = step()  # warm-up, untimed
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        last = step()
        times.append(time.perf_counter() - start)
    return {
        "step_s": statistics.median(times),
        "best_s": min(times),
        "images": args.batch,
        "loss_first": first,
        "loss_last": last,
        "threads": torch.get_num_threads(),
        "backend": f"torch {torch.__version__}",
    }


def _child(row: str, spec: dict, out: str) -> None:
    args = argparse.Namespace(**spec)
    with tempfile.TemporaryDirectory(prefix="jdet-cc-") as cache_dir:
        if row.startswith("torch:"):
            result = _run_torch(args, int(row.split(":")[1]))
        else:
            result = _run_jdet(row, args, cache_dir)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pathlib.Path(out).write_text(json.dumps(result))


def _run_row(row: str, args) -> dict:
    """Run one row in a fresh Python process; its result, or {"error": last stderr lines}."""
    spec = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", row, json.dumps(spec), out],
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode or not os.path.exists(out):
            tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return {"error": f"exit {proc.returncode}: {tail}"}
        return json.loads(pathlib.Path(out).read_text())


def _label(row: str, result: dict) -> str:
    if not row.startswith("torch:"):
        return ROWS[row]
    threads = result.get("threads", row.split(":")[1])
    plural = "" if str(threads) == "1" else "s"
    return f"{ROWS['torch']} ({threads} thread{plural}{', default' if row == 'torch:0' else ''})"


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
        elif not all(importlib.util.find_spec(m) for m in ("torch", "ultralytics")):
            notes.append(
                'ultralytics rows skipped: no torch/ultralytics (pip install -e ".[convert]")'
            )
        else:
            rows += [f"torch:{int(t)}" for t in args.torch_threads.split(",") if t]
    load_before = os.getloadavg()
    # The YOLOv8n rows run back to back so that their ratios see the same machine load.
    order = sorted(rows, key=lambda r: (r == "refdet", r))
    results = {}
    for row in order:
        results[row] = _run_row(row, args)
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
    else:
        _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(_parser)
        bench_train(_parser.parse_args(sys.argv[1:]))
