"""This CPU's measured float32 peak under XLA: jitted matmuls and 3×3 convolutions, GFLOP/s.

    python -m benchmarks peak [--repeats 5] [--quick]

Kernels (float32, all cores, jitted, inputs on device, timed to `block_until_ready`):
  matmul M×K @ K×N: 2·M·K·N FLOPs, sizes 1024³, 2048³ and 4096³ (the largest saturate the
    cores; the best is what counts).
  3×3 convolution forward, NHWC, stride 1, SAME padding: 2·B·H·W·Cin·Cout·9 FLOPs, at YOLOv8n
    shapes: batch 8 of 80×80×64→64, 40×40×128→128 and 20×20×256→256.
Each kernel's rate is its FLOPs ÷ the median of --repeats calls after one untimed call (and ÷
the best call, "gflops_best"); the peak is the best kernel's median rate. `python -m benchmarks
all` divides a train step's achieved GFLOP/s by it; `profile peak` meters two kernels with it.
"""

from __future__ import annotations

import argparse

from benchmarks.timing import time_call

MATMULS = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]
CONVS = [(8, 80, 64, 64), (8, 40, 128, 128), (8, 20, 256, 256)]  # batch, side, Cin, Cout
QUICK_MATMULS = [(256, 256, 256)]
QUICK_CONVS = [(1, 16, 16, 16)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per kernel")
    parser.add_argument("--quick", action="store_true", help="one tiny kernel of each kind")


def _kernels(matmuls, convs):
    """(name, FLOPs, jitted fn, inputs) for every kernel."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    matmul = jax.jit(jnp.matmul)
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    for m, k, n in matmuls:
        a, b = jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))
        yield f"matmul {m}×{k} @ {k}×{n}", 2 * m * k * n, matmul, (a, b)
    for batch, side, cin, cout in convs:
        x = jax.random.normal(key, (batch, side, side, cin))
        w = jax.random.normal(key, (3, 3, cin, cout))
        flops = 2 * batch * side * side * cin * cout * 9
        yield f"conv 3×3 NHWC {batch}×{side}×{side}×{cin}→{cout}", flops, conv, (x, w)


def measure_kernels(matmuls, convs, repeats: int) -> list[dict]:
    """[{name, gflop, median_s, best_s, gflops (median), gflops_best}] of every kernel."""
    kernels = []
    for name, flops, fn, inputs in _kernels(matmuls, convs):
        timing = time_call(lambda fn=fn, inputs=inputs: fn(*inputs), repeats)
        kernels.append(
            {
                "name": name,
                "gflop": flops / 1e9,
                "median_s": timing.median_s,
                "best_s": timing.best_s,
                "gflops": flops / 1e9 / timing.median_s,
                "gflops_best": flops / 1e9 / timing.best_s,
            }
        )
    return kernels


def measure_peak(args) -> dict:
    """{"kernels": [{name, gflop, median_s, best_s, gflops, gflops_best}], "peak_gflops",
    "peak_kernel"}."""
    shapes = (QUICK_MATMULS, QUICK_CONVS) if args.quick else (MATMULS, CONVS)
    kernels = measure_kernels(*shapes, args.repeats)
    best = max(kernels, key=lambda k: k["gflops"])
    return {"kernels": kernels, "peak_gflops": best["gflops"], "peak_kernel": best["name"]}


def bench_peak(args) -> None:
    import os

    import jax

    result = measure_peak(args)
    print(
        f"float32 peak under XLA: jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print()
    print("| kernel | GFLOP per call | median (ms) | GFLOP/s |")
    print("|---|---:|---:|---:|")
    for k in result["kernels"]:
        print(f"| {k['name']} | {k['gflop']:.2f} | {k['median_s'] * 1e3:.1f} | {k['gflops']:.1f} |")
    print()
    print(f"peak: {result['peak_gflops']:.1f} GFLOP/s ({result['peak_kernel']})")
