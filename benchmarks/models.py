"""Model benchmark: jdet's query branch and support encoders vs their PyTorch peers.

    python -m benchmarks models [--batch 8] [--image 320] [--repeats 10] [--no-torch]

Forward and forward + backward of the query branch (YOLOv8n, batch 8, 320²) and of the support
encoders (DINOv3 ViT-S/16, DINOv2 ViT-S/14 on 3 references at 256²), jdet vs the PyTorch peers
(ultralytics, transformers; random weights, same shapes, same process) when the `convert` extra
is installed. torch uses all cores (torch.get_num_threads()).
"""

from __future__ import annotations

import argparse

from benchmarks.timing import time_call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peers")


def _jdet_rows(name: str, module, x, repeats: int, *, has_bn: bool) -> list[tuple]:
    import jax
    import jax.numpy as jnp

    variables = module.init(jax.random.PRNGKey(0), x)
    fwd = jax.jit(lambda v, x: module.apply(v, x))

    def loss(params, rest, x):
        if has_bn:
            out, _ = module.apply(
                {"params": params, **rest}, x, train=True, mutable=["batch_stats"]
            )
        else:
            out = module.apply({"params": params, **rest}, x)
        return sum(jnp.sum(jnp.square(o.astype(jnp.float32))) for o in jax.tree.leaves(out))

    rest = {k: v for k, v in variables.items() if k != "params"}
    bwd = jax.jit(jax.grad(loss))
    fwd_t = time_call(lambda: fwd(variables, x), repeats)
    bwd_t = time_call(lambda: bwd(variables["params"], rest, x), repeats)
    return [
        (name, "forward", fwd_t.first_s, fwd_t.median_s),
        (name, "forward + backward", bwd_t.first_s, bwd_t.median_s),
    ]


def bench_models(args) -> None:
    import jax
    import jax.numpy as jnp

    from benchmarks.torch_side import torch_peer_rows
    from jdet.models.vit import ViT
    from jdet.models.yolo import YOLOv8

    query = jnp.zeros((args.batch, args.image, args.image, 3))
    rows = _jdet_rows("YOLOv8n (jdet)", YOLOv8("n", 80), query, args.repeats, has_bn=True)
    refs = jnp.zeros((3, 256, 256, 3))
    for label, variant in [("DINOv3 ViT-S/16", "dinov3-S/16"), ("DINOv2 ViT-S/14", "dinov2-S/14")]:
        rows += _jdet_rows(f"{label} (jdet)", ViT(variant), refs, args.repeats, has_bn=False)
    if args.no_torch:
        peer_rows, note = [], "torch peers skipped (--no-torch)"
    else:
        peer_rows, note = torch_peer_rows(args.batch, args.image, args.repeats)
    print(
        f"jdet models benchmark: YOLOv8n batch {args.batch} at {args.image}², support encoders "
        f"on 3 references at 256²; jax {jax.__version__} ({jax.devices()[0].platform}); {note}; "
        f"median of {args.repeats}"
    )
    print()
    peers = {(n.split(" (")[0], step): med for n, step, _, med in peer_rows}
    print(
        "| model | step | compile/first call (s) | time per call (ms) | jdet speed vs torch peer |"
    )
    print("|---|---|---:|---:|---:|")
    for name, step, first, med in rows + peer_rows:
        base = name.split(" (")[0]
        ratio = ""
        if name.endswith("(jdet)") and (base, step) in peers:
            ratio = f"{peers[(base, step)] / med:.2f}×"
        print(f"| {name} | {step} | {first:.2f} | {med * 1e3:.1f} | {ratio} |")
