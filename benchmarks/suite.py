"""Every benchmark in one Markdown table: `python -m benchmarks all`.

    python -m benchmarks all [--quick] [--no-torch] [--json PATH] [--batch 8] [--image 320]
                             [--repeats 5] [--loss-repeats 20] [--data-batches 20]
                             [--data-workers 0,2] [--frames 48] [--peak-repeats 5]

Each row group runs in its own fresh Python process (`benchmarks.proc`), one after the other,
so that compile times start from nothing, peak RSS (ru_maxrss) is the row's own and no row
disturbs another:
  train step and compile: the `train` benchmark's rows (jdet YOLOv8n, ultralytics YOLOv8n
    when torch + ultralytics are installed and not --no-torch, jdet RefDet), run back to back;
  per-term gradients: the `losses` benchmark's numbers (`measure_losses`);
  data pipeline: the `data` benchmark's rows on a synthetic dataset (`measure_data`), per
    worker count;
  inference: the `infer` benchmark at --image on a 640×360 video (`measure_infer`);
  float32 peak: the `peak` benchmark (XLA matmuls and 3×3 convolutions, `measure_peak`);
  FLOPs per step: XLA's cost analysis of the compiled jdet steps at the same shapes
    (`benchmarks.flops.measure_flops`).
--quick shrinks every size and repeat count (batch 2 at 128², tiny inference model, no RefDet
row, FLOPs of the lowered step: a smoke run of a few minutes, numbers meaningless).
The machine is shared and noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import sys

from benchmarks import data, flops, infer, losses, peak, train
from benchmarks.proc import run_in_child, spec_of
from benchmarks.timing import time_call

# YOLOv8n, 1 class: forward GFLOP of one 320² image (ultralytics' 8.2 GFLOP at 640², ÷ 4)
YOLO_GFLOP_320 = 2.05
# kind: (add_arguments, measure function) of each child process (besides the train rows)
CHILDREN = {
    "losses": (losses.add_arguments, losses.measure_losses),
    "data": (data.add_arguments, data.measure_data),
    "infer": (infer.add_arguments, infer.measure_infer),
    "peak": (peak.add_arguments, peak.measure_peak),
    "flops": (flops.add_arguments, flops.measure_flops),
}


def child_args(kind: str, argv: list[str]) -> argparse.Namespace:
    """A child's command line parsed by its benchmark's parser (exits on an unknown option)."""
    parser = argparse.ArgumentParser(prog=f"benchmarks {kind}")
    (train.add_arguments if kind == "train" else CHILDREN[kind][0])(parser)
    return parser.parse_args(argv)


def argvs(args) -> dict[str, list[str]]:
    """The command line of every benchmark at this run's sizes."""
    shape = ["--batch", str(args.batch), "--image", str(args.image)]
    if args.quick:
        return {
            "train": [*shape, "--repeats", "2"],
            "losses": [*shape, "--repeats", "2", "--boxes", "4"],
            "data": [
                "--videos",
                "2",
                "--frames",
                "20",
                "--size",
                "160x96",
                "--query-size",
                str(args.image),
                "--batches",
                "2",
                "--workers",
                "0",
            ],
            "infer": ["--frames", "20", "--sizes", str(args.image), "--batch", "4", "--tiny"],
            "peak": ["--repeats", "3", "--quick"],
            "flops": [*shape, "--rows", "yolo", "--lowered"],
        }
    return {
        "train": [*shape, "--repeats", str(args.repeats)],
        "losses": [*shape, "--repeats", str(args.loss_repeats)],
        "data": [
            "--query-size",
            str(args.image),
            "--batches",
            str(args.data_batches),
            "--workers",
            args.data_workers,
        ],
        "infer": ["--frames", str(args.frames), "--sizes", str(args.image)],
        "peak": ["--repeats", str(args.peak_repeats)],
        "flops": [*shape, "--rows", "yolo,refdet"],
    }


def _machine() -> dict:
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    versions = {}
    for package in ("jax", "jaxlib", "torch", "ultralytics"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": models[0] if models else "unknown CPU", "cores": os.cpu_count(), **versions}


def run_all(args) -> dict:
    """Run every row group, each in its own process (progress on stderr); all the numbers."""
    if args.quick:
        args.batch, args.image = 2, 128
    command_lines = argvs(args)
    parsed = {kind: child_args(kind, argv) for kind, argv in command_lines.items()}
    skipped = {}
    if args.no_torch:
        skipped["torch"] = "--no-torch"
    elif not train.torch_available():
        skipped["torch"] = 'torch/ultralytics not installed (pip install -e ".[convert]")'
    if args.quick:
        skipped["refdet"] = "--quick (its compile alone takes minutes)"
    results = {
        "machine": _machine(),
        "quick": args.quick,
        "batch": args.batch,
        "image": args.image,
        "argv": command_lines,
        "load_start": os.getloadavg()[0],
        "train": {},
        "skipped": skipped,
    }
    # The two YOLOv8n rows run back to back so that their ratio sees the same machine load.
    jobs = [
        ("train", row) for row in ("yolo", "torch:0", "refdet") if row.split(":")[0] not in skipped
    ]
    jobs += [(kind, None) for kind in ("peak", "losses", "data", "infer", "flops")]
    for kind, row in jobs:
        if kind == "train":
            done = time_call(lambda r=row: train.run_row(r, parsed["train"]), 0, sync=None)
            results["train"][row.split(":")[0]] = done.last
        else:
            done = time_call(lambda k=kind: run_in_child(k, spec_of(parsed[k])), 0, sync=None)
            results[kind] = done.last
        print(f"{row or kind}: {done.first_s:.0f} s", file=sys.stderr, flush=True)
    results["load_end"] = os.getloadavg()[0]
    return results


def _ok(result) -> bool:
    return bool(result) and "error" not in result


def _rss(result) -> str:
    return f"{result['peak_rss_mib']:.0f}" if "peak_rss_mib" in result else ""


def _failed(label: str, result) -> list[tuple]:
    return [(label, "failed", (result or {}).get("error", "not run")[:160], "")]


def _jdet_train_rows(name: str, unit: str, r, torch, skipped) -> list[tuple]:
    label = f"train step, {name} ({unit})"
    if skipped:
        return [(label, "skipped", skipped, "")]
    if not _ok(r):
        return _failed(label, r)
    versus = ""
    if name.endswith("YOLOv8n") and _ok(torch):
        versus = (
            f"{torch['step_s'] / r['step_s']:.2f}× ultralytics (median steps), "
            f"{torch['best_s'] / r['best_s']:.2f}× (best steps)"
        )
    hit = "cache hit" if r.get("cache_hit") else "cache MISS"
    return [
        (label, f"{r['images'] / r['step_s']:.1f}", versus, _rss(r)),
        (f"compile cold, {name} step (s)", f"{r['compile_cold_s']:.1f}", "empty cache", ""),
        (f"compile cached, {name} step (s)", f"{r['compile_cached_s']:.1f}", hit, ""),
    ]


def _train_rows(res: dict) -> list[tuple]:
    yolo, torch, refdet = (res["train"].get(k) for k in ("yolo", "torch", "refdet"))
    label, skipped = "train step, ultralytics YOLOv8n (images/s)", res["skipped"]
    if "torch" in skipped:
        torch_rows = [(label, "skipped", skipped["torch"], "")]
    elif _ok(torch):
        detail = f"eager, {torch.get('threads', '?')} torch threads"
        torch_rows = [(label, f"{torch['images'] / torch['step_s']:.1f}", detail, _rss(torch))]
    else:
        torch_rows = _failed(label, torch)
    return (
        _jdet_train_rows("jdet YOLOv8n", "images/s", yolo, torch, None)
        + torch_rows
        + _jdet_train_rows("jdet RefDet", "query images/s", refdet, None, skipped.get("refdet"))
    )


def _component_rows(res: dict) -> list[tuple]:
    rows = []
    losses, data, infer = res.get("losses"), res.get("data"), res.get("infer")
    if _ok(losses):
        sep, scan = (losses["rows"][i]["median_s"] / losses["one_backward_s"] for i in (5, 6))
        detail = (
            f"{losses['rows'][4]['median_s'] * 1e3:.1f} ms vs one backward "
            f"{losses['one_backward_s'] * 1e3:.1f} ms; method=separate {sep:.2f}×, "
            f"scan {scan:.2f}×"
        )
        label = f"per_term_grads ({losses['num_terms']} terms, vmap) ÷ one backward"
        rows.append((label, f"{losses['per_term_ratio']:.2f}×", detail, _rss(losses)))
    else:
        rows += _failed("per_term_grads ÷ one backward", losses)
    # the step the pipeline feeds: RefDet's, or YOLOv8n's where RefDet did not run
    steps = [(n, res["train"].get(k)) for n, k in [("RefDet", "refdet"), ("YOLOv8n", "yolo")]]
    name, step = next(((n, r) for n, r in steps if _ok(r)), (None, None))
    for r in data["rows"] if _ok(data) else []:
        versus = (
            f"{r['images_per_s'] * step['step_s'] / step['images']:.1f}× the jdet {name} "
            "train step's images/s"
            if step
            else ""
        )
        rss = f"{r['main_rss_mib']:.0f}" + (
            f" + {r['worker_rss_mib']:.0f} per worker" if r["workers"] else ""
        )
        label = f"data pipeline, {r['workers']} workers (query images/s)"
        rows.append((label, f"{r['images_per_s']:.1f}", versus, rss))
    if not _ok(data):
        rows += _failed("data pipeline (query images/s)", data)
    if _ok(infer):
        r = infer["rows"][0]
        label = f"inference, jdet.predict 640×360 video at {r['size']}² (frames/s)"
        detail = (
            f"compile {r['compile_s']:.1f} s; {r['fps_recomputed']:.2f} frames/s with "
            "prototypes recomputed per batch"
        )
        rows.append((label, f"{r['fps_cached']:.2f}", detail, _rss(infer)))
    else:
        rows += _failed("inference, jdet.predict (frames/s)", infer)
    return rows


def _flop_rows(res: dict) -> list[tuple]:
    peak, flops, train = res.get("peak"), res.get("flops") or {}, res["train"]
    if not _ok(peak):
        return _failed("float32 peak (GFLOP/s)", peak)
    rows = []
    for kind, label in [("matmul", "XLA matmul"), ("conv", "XLA 3×3 conv")]:
        best = max(
            (k for k in peak["kernels"] if k["name"].startswith(kind)), key=lambda k: k["gflops"]
        )
        rss = _rss(peak) if kind == "matmul" else ""
        rows.append(
            (f"float32 peak, {label} (GFLOP/s)", f"{best['gflops']:.1f}", best["name"], rss)
        )
    nominal = 3 * YOLO_GFLOP_320 * 1e9 * res["batch"] * (res["image"] / 320) ** 2
    xla = {row: (flops.get(row) or {}).get("flops") for row in ("yolo", "refdet")}
    for name, row, count, mark in [
        ("jdet YOLOv8n", "yolo", xla["yolo"], "XLA FLOPs¹"),
        ("jdet YOLOv8n", "yolo", nominal, "nominal FLOPs²"),
        ("ultralytics YOLOv8n", "torch", nominal, "nominal FLOPs²"),
        ("jdet RefDet", "refdet", xla["refdet"], "XLA FLOPs¹"),
    ]:
        r = train.get(row)
        if _ok(r) and count:
            achieved = count / r["step_s"] / 1e9
            detail = (
                f"{100 * achieved / peak['peak_gflops']:.1f}% of peak; "
                f"{count / 1e9:.1f} GFLOP per step"
            )
            label = f"achieved, {name} step, {mark} (GFLOP/s)"
            rows.append((label, f"{achieved:.1f}", detail, ""))
    return rows


def format_table(res: dict) -> str:
    """The Markdown report of `run_all`'s result: header line, table, footnotes."""
    m = res["machine"]
    torch = f"torch {m['torch']}" if m.get("torch") else "torch not installed"
    header = (
        f"jdet benchmarks (python -m benchmarks all{' --quick' if res['quick'] else ''}): "
        f"{m['cpu']}, {m['cores']} cores; jax {m['jax']}, jaxlib {m['jaxlib']}; {torch}; "
        f"batch {res['batch']} at {res['image']}²; load average {res['load_start']:.1f} at start, "
        f"{res['load_end']:.1f} at end"
    )
    rows = _train_rows(res) + _component_rows(res) + _flop_rows(res)
    sources = sorted(
        {v["source"] for v in (res.get("flops") or {}).values() if isinstance(v, dict)}
    )
    notes = [
        (
            "Each row group is its own process (compile rows: the train row's process; peak "
            "RSS = ru_maxrss). Peak = the best of the float32 matmul and 3×3 convolution kernels."
        ),
        (
            f"¹ XLA `cost_analysis()['flops']` of {' and '.join(sources) or 'n/a'} for the jdet "
            "step at the same shapes, in its own process."
        ),
        (
            f"² nominal: 3 × {YOLO_GFLOP_320} GFLOP per 320² image (YOLOv8n 1-class forward; "
            "backward ≈ 2× forward) × batch × (image/320)²; the torch step does the same math "
            "(thop is not available)."
        ),
    ]
    table = ["| measurement | value | compared / detail | peak RSS (MiB) |", "|---|---:|---|---:|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n\n".join([header, "\n".join(table), *notes])


def bench_all(args) -> None:
    results = run_all(args)
    print(format_table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes and repeats (smoke run)")
    parser.add_argument("--no-torch", action="store_true", help="skip the ultralytics row")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5, help="timed train steps per row")
    parser.add_argument("--loss-repeats", type=int, default=20, help="timed calls, losses rows")
    parser.add_argument("--data-batches", type=int, default=20, help="timed pipeline batches")
    parser.add_argument("--data-workers", default="0,2", help="pipeline worker counts")
    parser.add_argument("--frames", type=int, default=48, help="frames of the inference video")
    parser.add_argument("--peak-repeats", type=int, default=5, help="timed calls per kernel")
