"""jdet's RefDet train step side by side with the original PyTorch RefDet (`peer`).

    python -m benchmarks peer --zalo-src DIR [--sizes 320,640,small] [--repeats 3]
                              [--torch-threads 2] [--rows jdet,matched,original]

Run it from the `convert` environment (torch, ultralytics, timm next to jdet), with DIR an
extracted copy of the original project at 075f362 (`benchmarks.refdet_peer`'s docstring says how
to extract it and what exactly is built on the torch side). Every row is its own fresh process
(compile times from nothing, its own peak RSS); the rows of a size run one after the other, so
their ratios see the same machine load.

Sizes: "320" and "640" are the original's configuration (YOLOv8n query branch at that size,
DINOv3 ViT-S/16 on 3 references per way at 256², batch 8 = one 2-way episode of 4 queries per
way, the six stage-2 terms, grouped AdamW, clipping); jdet builds it from
`configs/refdet_n.py:stage=2`. "small" is the quickstart's model and sizes
(`configs/quickstart.py`, 128² queries, 64² references) on both sides.

Rows:
  original  the original's stage-2 detection step (`benchmarks.refdet_peer.measure`): its
            references go through the ViT under `torch.no_grad` (one photo at a time), so its
            backward pass never reaches the support encoder or the prototype projections.
  jdet      jdet's step as configured: the support encoder's unfrozen blocks (7–12 of ViT-S)
            and the projections are trained by every step, so its backward pass runs through
            the ViT — work the original's detection step does not do.
  matched   jdet with the original's detection-step work: the whole support encoder frozen
            (`model.frozen_blocks` = its depth) and `train_projections=False`, so no backward
            pass runs through the references, and no base head (`model.nc_base=0`, as the
            original's train.py builds it; configs/refdet_n.py keeps an 80-class one).

Columns (ms, median of --repeats after one warm-up call, whose time is "first"): forward (train
mode, no gradient), forward + backward (value and gradient of the weighted loss, no optimiser),
step (the whole train step: forward, loss, backward, clipping, AdamW), peak RSS of the row's
process. Random weights, random images. The last column is the original's step time over the
row's (>1: faster than the original).
"""

from __future__ import annotations

import argparse
import os
import platform

from benchmarks.proc import run_in_child, spec_of

ROWS = ("jdet", "matched", "original")
SIZES = {  # name: (jdet config, its argument, query size or None for the config's own)
    "320": ("configs/refdet_n.py", "stage=2", 320),
    "640": ("configs/refdet_n.py", "stage=2", 640),
    "small": ("configs/quickstart.py", None, None),
}
PARTS = ("forward", "forward_backward", "step")


def gt_box(image: int) -> tuple[float, ...]:
    """The one GT box of every query, the same on both sides: 32×32 px at 320² (scaled with the
    image). The original makes every anchor whose centre lies in a box a positive and its CPE
    loop is cubic in the positives: a 96×128 box at 320² took it ~20 min per step."""
    return tuple(v * image / 320 for v in (40.0, 50.0, 72.0, 82.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zalo-src", default="", help="the folder holding src/ of the original at 075f362"
    )
    parser.add_argument("--sizes", default="320,640,small", help="comma-separated: 320,640,small")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=2)


def _jdet_case(size: str, row: str):
    from benchmarks.steps import build_config_step

    file, arg, image = SIZES[size]
    overrides = {"data.query_size": image} if image else {}
    fields = {}
    if row == "matched":
        from jdet.models.vit_variants import resolve_variant

        encoder = {"320": "dinov3-S/16", "640": "dinov3-S/16", "small": "dinov3-tiny"}[size]
        overrides["model.frozen_blocks"] = resolve_variant(encoder).num_layers
        overrides["model.nc_base"] = 0
        fields["train_projections"] = False
    image = image or 128
    return build_config_step(file, arg, overrides=overrides, model_fields=fields, box=gt_box(image))


def measure_jdet(args) -> dict:
    """One jdet row (args.size, args.row) in this process: forward, forward + backward and the
    step, each compiled on its first call."""
    import jax
    import jax.numpy as jnp

    from benchmarks.timing import time_call
    from jdet.losses import weighted_total
    from jdet.training.steps import forward_terms

    case = _jdet_case(args.size, args.row)
    state, batch = case.state, case.batch
    # copies: the step donates (and so deletes) the state's own arrays
    params, stats = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
    apply, wiou, rng = state.apply_fn, state.wiou_state, case.rng

    @jax.jit
    def forward(params, stats, batch):
        return apply(
            {"params": params, "batch_stats": stats},
            batch,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )

    @jax.jit
    def forward_backward(params, stats, batch):
        def loss(p):
            terms, _, _ = forward_terms(apply, p, stats, wiou, batch, rng, case.loss_cfg, True)
            return weighted_total(terms, case.loss_weights)

        return jax.value_and_grad(loss)(params)

    out = {"description": case.description, "backend": f"jax {jax.__version__}"}
    calls = {
        "forward": lambda: forward(params, stats, batch),
        "forward_backward": lambda: forward_backward(params, stats, batch),
        "step": case.run,
    }
    for name, fn in calls.items():
        t = time_call(fn, args.repeats)
        out[name] = {"first_ms": t.first_s * 1e3, "median_ms": t.median_s * 1e3}
    out["loss_first"] = float(case.first_metrics["loss"])
    out["loss_last"] = float(case.metrics["loss"])
    return out


def measure_original(args) -> dict:
    """The original's row (args.size) in this process (jax is never imported)."""
    from benchmarks.refdet_peer import measure

    _, _, image = SIZES[args.size]
    small = args.size == "small"
    result = measure(
        args.zalo_src,
        image=image or 128,
        repeats=args.repeats,
        threads=args.torch_threads,
        small=small,
        box=gt_box(image or 128),
    )
    result["backend"] = f"torch {result.get('torch', '?')}, {result.get('threads')} threads"
    return result


def measure_row(args) -> dict:
    return measure_original(args) if args.row == "original" else measure_jdet(args)


def bench_peer(args) -> None:
    sizes = [s for s in args.sizes.split(",") if s]
    rows = [r for r in args.rows.split(",") if r]
    bad = sorted(set(sizes) - set(SIZES)) + sorted(set(rows) - set(ROWS))
    if bad:
        raise SystemExit(f"unknown --sizes/--rows {bad}; sizes {list(SIZES)}, rows {list(ROWS)}")
    if "original" in rows and not args.zalo_src:
        raise SystemExit(
            "the original row needs --zalo-src DIR (an extracted it-dainb/zalo_ai_2025 at "
            "075f362; see benchmarks/refdet_peer.py), or leave it out with --rows jdet,matched"
        )
    load_before = os.getloadavg()
    results = {}
    for size in sizes:
        for row in rows:
            results[size, row] = run_in_child("peer", {**spec_of(args), "size": size, "row": row})
    load_after = os.getloadavg()
    print(
        f"RefDet train step, jdet vs the original (075f362); median of {args.repeats} after one "
        f"warm-up; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after; each row its own process"
    )
    backends = sorted({r["backend"] for r in results.values() if "backend" in r})
    print("; ".join(backends))
    print()
    print(
        "| size | row | forward (ms) | forward + backward (ms) | step (ms) | step first call (s) "
        "| peak RSS (MiB) | loss first → last | original step ÷ row step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for size in sizes:
        peer = results.get((size, "original"), {})
        for row in rows:
            r = results[size, row]
            if "error" in r:
                print(f"| {size} | {row} | failed: {r['error']} |||||||")
                continue
            ratio = (
                f"{peer['step']['median_ms'] / r['step']['median_ms']:.2f}×"
                if "step" in peer
                else "—"
            )
            print(
                f"| {size} | {row} | {r['forward']['median_ms']:.0f} | "
                f"{r['forward_backward']['median_ms']:.0f} | {r['step']['median_ms']:.0f} | "
                f"{r['step']['first_ms'] / 1e3:.1f} | {r['peak_rss_mib']:.0f} | "
                f"{r['loss_first']:.3g} → {r['loss_last']:.3g} | {ratio} |"
            )
    print()
    for (size, row), r in results.items():
        if "description" in r:
            print(f"{size} {row}: {r['description']}")
