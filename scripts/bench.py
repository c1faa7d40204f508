"""Benchmarks that print tables (never timed assertions: this machine is shared and noisy).

    python3 scripts/bench.py losses [--batch 8] [--image 320] [--repeats 20]

losses: a YOLOv8n-shaped head (`jdet.losses.probe`: strides 8/16/32, 2100 anchors at 320²,
20 padded GT boxes, 17 DFL bins, 2 ways) at batch 8. Rows: the loss terms forward; forward +
backward of the weighted total through the head parameters ("one backward"); `per_term_grads`
for the 6 terms in one call, with one vjp vmapped over the 6 one-hot cotangents, and with 6
single-term grads in one jit (the seed's 6 backward passes, sharing the forward). Ratios are
taken within one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from jdet.grads import per_term_grads
from jdet.losses import LossConfig, loss_terms, weighted_total
from jdet.losses.probe import make_probe, probe_terms_fn

WEIGHTS = dict(box=7.5, cls=0.5, dfl=0.75, supcon=1.2, cpe=0.6, triplet=0.3)


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds per call)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def bench_losses(args) -> None:
    params, inputs, targets, apply_fn = make_probe(
        jax.random.PRNGKey(0), batch=args.batch, image=args.image, num_boxes=args.boxes
    )
    cfg = LossConfig()
    terms_fn = probe_terms_fn(apply_fn, cfg)
    outputs = jax.jit(apply_fn)(params, inputs)
    num_anchors = outputs["dist"].shape[1]

    def total(p, x, t):
        return weighted_total(terms_fn(p, x, t), WEIGHTS)

    head_fwd = jax.jit(apply_fn)
    fwd = jax.jit(lambda o, t: loss_terms(o, t, cfg)[0])
    fwd_head = jax.jit(lambda p, x, t: terms_fn(p, x, t))
    bwd = jax.jit(jax.value_and_grad(total))
    per_term = jax.jit(lambda p, x, t: per_term_grads(terms_fn, p, x, t))

    sep = jax.jit(lambda p, x, t: per_term_grads(terms_fn, p, x, t, method="separate"))
    num_terms = len(terms_fn(params, inputs, targets))

    rows = []
    for name, fn, a in [
        ("head forward only (reference)", head_fwd, (params, inputs)),
        ("loss_terms forward", fwd, (outputs, targets)),
        ("head + loss_terms forward", fwd_head, (params, inputs, targets)),
        ("forward + backward, weighted total (one backward)", bwd, (params, inputs, targets)),
        (f"per_term_grads, {num_terms} terms, method=vmap (one vjp)", per_term, (params, inputs, targets)),
        (f"per_term_grads, {num_terms} terms, method=separate (K grads, one jit)", sep, (params, inputs, targets)),
    ]:
        first, med = _time(fn, *a, repeats=args.repeats)
        rows.append((name, first, med))
    one_bwd = rows[3][2]
    print(
        f"jdet losses benchmark: batch {args.batch}, {args.image}x{args.image}, {num_anchors} anchors, "
        f"{args.boxes} GT slots, 17 bins, 2 ways; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
        f"median of {args.repeats}"
    )
    print()
    print("| step | compile + first call (s) | time per call (ms) | × one backward |")
    print("|---|---:|---:|---:|")
    for name, first, med in rows:
        print(f"| {name} | {first:.2f} | {med * 1e3:.1f} | {med / one_bwd:.2f} |")
    print()
    for row in rows[4:]:
        ratio = row[2] / one_bwd
        print(
            f"{row[0]}: {ratio:.2f}× one backward "
            f"(goal ≤ {num_terms + 1}×: {'met' if ratio <= num_terms + 1 else 'NOT met'})"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("losses", help="loss_terms and per-term gradient cost")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--boxes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.what == "losses":
        bench_losses(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
