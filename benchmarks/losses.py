"""Loss benchmark and per-term gradient check on `benchmarks.probe`'s synthetic head.

    python -m benchmarks losses [--batch 8] [--image 320] [--boxes 20] [--repeats 20]
    python -m benchmarks probe [--batch 8] [--image 320] [--seed 0]

losses: a YOLOv8n-shaped head (`benchmarks.probe`: strides 8/16/32, 2100 anchors at 320², 20
padded GT boxes, 17 DFL bins, 2 ways) at batch 8. Rows: the loss terms forward; forward +
backward of the weighted total through the head parameters ("one backward"); `per_term_grads`
for the 6 terms in one call, with one vjp vmapped over the 6 one-hot cotangents, with 6
single-term grads in one jit (the seed's 6 backward passes, sharing the forward) and with one
vjp pulled back per term in turn (scan). Ratios are taken within one run.

probe: `jdet.grads.diagnose` on one synthetic batch: per-term gradient ✓/✗ table (exit status 1
when a gradient is not finite).
"""

from __future__ import annotations

import argparse
import platform

from benchmarks.timing import time_call

WEIGHTS = {"box": 7.5, "cls": 0.5, "dfl": 0.75, "supcon": 1.2, "cpe": 0.6, "triplet": 0.3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)


def measure_losses(args) -> dict:
    """The `losses` table's numbers: {"rows": [{name, first_s, median_s}], "num_anchors",
    "num_terms", "one_backward_s", "per_term_ratio" (method=vmap ÷ one backward)}."""
    import jax

    from benchmarks.probe import make_probe, probe_terms_fn
    from jdet.grads import per_term_grads
    from jdet.losses import LossConfig, loss_terms, weighted_total

    params, inputs, targets, apply_fn = make_probe(
        jax.random.PRNGKey(0), batch=args.batch, image=args.image, num_boxes=args.boxes
    )
    cfg = LossConfig()
    terms_fn = probe_terms_fn(apply_fn, cfg)
    outputs = jax.jit(apply_fn)(params, inputs)

    def total(p, x, t):
        return weighted_total(terms_fn(p, x, t), WEIGHTS)

    num_terms = len(terms_fn(params, inputs, targets))
    head_inputs = (params, inputs, targets)
    cases = [
        ("head forward only (reference)", jax.jit(apply_fn), (params, inputs)),
        ("loss_terms forward", jax.jit(lambda o, t: loss_terms(o, t, cfg)[0]), (outputs, targets)),
        ("head + loss_terms forward", jax.jit(terms_fn), head_inputs),
        (
            "forward + backward, weighted total (one backward)",
            jax.jit(jax.value_and_grad(total)),
            head_inputs,
        ),
    ]
    methods = [
        ("vmap", "one vjp"),
        ("separate", "K grads, one jit"),
        ("scan", "one vjp, pull-back per term in turn"),
    ]
    for method, what in methods:
        fn = jax.jit(lambda p, x, t, m=method: per_term_grads(terms_fn, p, x, t, method=m))
        name = f"per_term_grads, {num_terms} terms, method={method} ({what})"
        cases.append((name, fn, head_inputs))
    rows = []
    for name, fn, a in cases:
        timing = time_call(lambda fn=fn, a=a: fn(*a), args.repeats)
        rows.append({"name": name, "first_s": timing.first_s, "median_s": timing.median_s})
    one_bwd = rows[3]["median_s"]
    return {
        "rows": rows,
        "num_anchors": outputs["dist"].shape[1],
        "num_terms": num_terms,
        "one_backward_s": one_bwd,
        "per_term_ratio": rows[4]["median_s"] / one_bwd,
    }


def bench_losses(args) -> None:
    import jax

    result = measure_losses(args)
    rows, one_bwd, num_terms = result["rows"], result["one_backward_s"], result["num_terms"]
    print(
        f"jdet losses benchmark: batch {args.batch}, {args.image}x{args.image}, "
        f"{result['num_anchors']} anchors, {args.boxes} GT slots, 17 bins, 2 ways; "
        f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({platform.processor() or platform.machine()}), median of {args.repeats}"
    )
    print()
    print("| step | compile + first call (s) | time per call (ms) | × one backward |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['name']} | {row['first_s']:.2f} | {row['median_s'] * 1e3:.1f} | "
            f"{row['median_s'] / one_bwd:.2f} |"
        )
    print()
    for row in rows[4:]:
        ratio = row["median_s"] / one_bwd
        print(
            f"{row['name']}: {ratio:.2f}× one backward "
            f"(goal ≤ {num_terms + 1}×: {'met' if ratio <= num_terms + 1 else 'NOT met'})"
        )


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)


def bench_probe(args) -> int:
    """Per-term gradient check on one synthetic batch; 1 when a gradient is not finite."""
    import jax

    from benchmarks.probe import make_probe, probe_terms_fn
    from jdet.grads import diagnose, format_grad_report

    params, inputs, targets, apply_fn = make_probe(
        jax.random.PRNGKey(args.seed), batch=args.batch, image=args.image
    )
    report, _ = diagnose(probe_terms_fn(apply_fn), params, inputs, targets)
    print(
        f"per-term gradient check: synthetic YOLOv8-shaped head, batch {args.batch}, "
        f"{args.image}x{args.image}, 17 DFL bins (the original's)"
    )
    print(format_grad_report(report))
    return 0 if report["all_finite"] else 1
