"""Depthwise convolutions on XLA:CPU: the grouped convolution against shifted slices.

    python -m benchmarks depthwise [--batch 8] [--repeats 10]

PSALM fusion (jdet.models.fusion) has depthwise 3×3 and 7×7 convolutions at every scale, P2
included. XLA:CPU lowers ``feature_group_count`` convolutions to a generic loop; the fast path
(`jdet.models.fast_layers.depthwise_conv`, `LayerImpl` part "depthwise") sums k² shifted
slices instead. Rows: the shapes of the photo recipe's fusion (t2 widths at 256² queries) and of
YOLOv8n's at 320²; forward, and forward + backward (gradients of input and kernel), both
jitted, timed in interleaved rounds (`benchmarks.timing`); the median in ms.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.timing import time_calls

# (H = W, channels, kernel, stride): t2 RefDet at 256² (P2 64², 16 ch … P5 8², 128 ch) and
# YOLOv8n's P2 at 320² (80², 32 ch).
SHAPES = [
    (64, 16, 7, 1),
    (64, 16, 3, 1),
    (32, 32, 7, 1),
    (16, 64, 7, 1),
    (80, 32, 7, 1),
    (64, 16, 3, 2),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)


def bench_depthwise(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from jdet.models.fast_layers import depthwise_conv

    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), batch {args.batch}; median ms\n")
    print("| input | kernel | grouped conv fwd | shifted fwd | grouped fwd+bwd | shifted fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|")
    for h, c, k, s in SHAPES:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((args.batch, h, h, c), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, 1, c), np.float32))
        p = k // 2

        def grouped(x, w, s=s, p=p):
            return jax.lax.conv_general_dilated(
                x,
                w,
                (s, s),
                ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=x.shape[-1],
            )

        def shifted(x, w, s=s):
            return depthwise_conv(x, w, s)

        def both(f):
            return jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))

        fns = {
            "gf": jax.jit(grouped),
            "sf": jax.jit(shifted),
            "gb": both(grouped),
            "sb": both(shifted),
        }
        t = time_calls({n: (lambda f=f: f(x, w)) for n, f in fns.items()}, args.repeats)
        ms = {n: 1e3 * float(np.median(t[n].times)) for n in fns}
        print(
            f"| {args.batch}×{h}×{h}×{c} | {k}×{k} stride {s} | {ms['gf']:.2f} | {ms['sf']:.2f} "
            f"| {ms['gb']:.2f} | {ms['sb']:.2f} |"
        )
