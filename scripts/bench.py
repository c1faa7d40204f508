"""Benchmarks that print tables (never timed assertions: this machine is shared and noisy).

    python3 scripts/bench.py losses [--batch 8] [--image 320] [--repeats 20]
    python3 scripts/bench.py models [--batch 8] [--image 320] [--repeats 10]
    python3 scripts/bench.py step [--batch 8] [--image 320]     (full RefDet train step)
    python3 scripts/bench.py data [--size 320x192 --query-size 320 --workers 0,2]   (bench_data.py)
    python3 scripts/bench.py infer [--frames 48] [--sizes 320,640]   (bench_infer.py)
    python3 scripts/bench.py train [--batch 8] [--image 320] [--repeats 5] [--no-torch]   (bench_train.py)
    python3 scripts/bench.py all [--quick] [--no-torch] [--json PATH]   (bench_all.py: one table of all)

models: forward and forward+backward of the query branch (YOLOv8n, batch 8, 320²) and of the
support encoders (DINOv3 ViT-S/16, DINOv2 ViT-S/14 on 3 references at 256²), jdet vs the
PyTorch peers (ultralytics, transformers; random weights, same shapes, same process) when the
`convert` extra is installed. torch uses all cores (torch.get_num_threads()).

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


def measure_losses(args) -> dict:
    """The `losses` table's numbers: {"rows": [{name, first_s, median_s}], "num_anchors",
    "num_terms", "one_backward_s", "per_term_ratio" (method=vmap ÷ one backward)}."""
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
        ("forward + backward, weighted total (one backward)", jax.jit(jax.value_and_grad(total)), head_inputs),
    ]
    methods = [
        ("vmap", "one vjp"),
        ("separate", "K grads, one jit"),
        ("scan", "one vjp, pull-back per term in turn"),
    ]
    for method, what in methods:
        fn = jax.jit(lambda p, x, t, m=method: per_term_grads(terms_fn, p, x, t, method=m))
        cases.append((f"per_term_grads, {num_terms} terms, method={method} ({what})", fn, head_inputs))
    rows = []
    for name, fn, a in cases:
        first, med = _time(fn, *a, repeats=args.repeats)
        rows.append({"name": name, "first_s": first, "median_s": med})
    one_bwd = rows[3]["median_s"]
    return {
        "rows": rows,
        "num_anchors": outputs["dist"].shape[1],
        "num_terms": num_terms,
        "one_backward_s": one_bwd,
        "per_term_ratio": rows[4]["median_s"] / one_bwd,
    }


def bench_losses(args) -> None:
    result = measure_losses(args)
    rows, one_bwd, num_terms = result["rows"], result["one_backward_s"], result["num_terms"]
    print(
        f"jdet losses benchmark: batch {args.batch}, {args.image}x{args.image}, {result['num_anchors']} anchors, "
        f"{args.boxes} GT slots, 17 bins, 2 ways; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
        f"median of {args.repeats}"
    )
    print()
    print("| step | compile + first call (s) | time per call (ms) | × one backward |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['name']} | {row['first_s']:.2f} | {row['median_s'] * 1e3:.1f} | {row['median_s'] / one_bwd:.2f} |")
    print()
    for row in rows[4:]:
        ratio = row["median_s"] / one_bwd
        print(
            f"{row['name']}: {ratio:.2f}× one backward "
            f"(goal ≤ {num_terms + 1}×: {'met' if ratio <= num_terms + 1 else 'NOT met'})"
        )


def add_losses_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=320)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)


def _torch_time(fn, repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _jdet_model_rows(name, module, x, repeats, *, has_bn):
    variables = module.init(jax.random.PRNGKey(0), x)
    fwd = jax.jit(lambda v, x: module.apply(v, x))

    def loss(params, rest, x):
        if has_bn:
            out, _ = module.apply({"params": params, **rest}, x, train=True, mutable=["batch_stats"])
        else:
            out = module.apply({"params": params, **rest}, x)
        return sum(jnp.sum(jnp.square(o.astype(jnp.float32))) for o in jax.tree.leaves(out))

    rest = {k: v for k, v in variables.items() if k != "params"}
    bwd = jax.jit(jax.grad(loss))
    return [
        (name, "forward", *_time(fwd, variables, x, repeats=repeats)),
        (name, "forward + backward", *_time(bwd, variables["params"], rest, x, repeats=repeats)),
    ]


def _torch_model_rows(name, model, x, repeats):
    import torch

    def fwd():
        model.eval()
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x)
        leaves = out if isinstance(out, (list, tuple)) else [getattr(out, "last_hidden_state", out)]
        sum((o.float() ** 2).sum() for o in leaves if torch.is_tensor(o)).backward()

    return [
        (name, "forward", *_torch_time(fwd, repeats)),
        (name, "forward + backward", *_torch_time(fwd_bwd, repeats)),
    ]


def _torch_peers(args):
    """(rows, note) for ultralytics YOLOv8n and transformers DINOv3/DINOv2, or ([], why)."""
    try:
        import torch
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return [], 'torch peers skipped: install the convert extra (pip install -e ".[convert]")'
    rows = []
    torch.manual_seed(0)
    yolo = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    rows += _torch_model_rows(
        "YOLOv8n (ultralytics)", yolo, torch.rand(args.batch, 3, args.image, args.image), args.repeats
    )
    try:
        from parity_vit import _import_transformers  # hides a broken torchvision wheel

        _import_transformers()
        from transformers import Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel
    except ImportError:
        return rows, "transformers peers skipped: transformers not installed"
    refs = torch.rand(3, 3, 256, 256)
    v3 = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                        intermediate_size=1536, patch_size=16, num_register_tokens=4))
    rows += _torch_model_rows("DINOv3 ViT-S/16 (transformers)", v3, refs, args.repeats)
    v2 = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                  intermediate_size=1536, patch_size=14, image_size=518))
    rows += _torch_model_rows("DINOv2 ViT-S/14 (transformers)", v2, refs, args.repeats)
    return rows, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def bench_models(args) -> None:
    from jdet.models.yolo import YOLOv8

    rows = _jdet_model_rows(
        "YOLOv8n (jdet)", YOLOv8("n", 80), jnp.zeros((args.batch, args.image, args.image, 3)),
        args.repeats, has_bn=True,
    )
    try:
        from jdet.models.vit import ViT
    except ImportError:
        vit_note = "jdet ViT not available"
    else:
        vit_note = ""
        refs = jnp.zeros((3, 256, 256, 3))
        rows += _jdet_model_rows("DINOv3 ViT-S/16 (jdet)", ViT("dinov3-S/16"), refs, args.repeats, has_bn=False)
        rows += _jdet_model_rows("DINOv2 ViT-S/14 (jdet)", ViT("dinov2-S/14"), refs, args.repeats, has_bn=False)
    peer_rows, note = _torch_peers(args) if not args.no_torch else ([], "torch peers skipped (--no-torch)")
    print(
        f"jdet models benchmark: YOLOv8n batch {args.batch} at {args.image}², support encoders on 3 "
        f"references at 256²; jax {jax.__version__} ({jax.devices()[0].platform}); {note}; "
        f"median of {args.repeats}" + (f"; {vit_note}" if vit_note else "")
    )
    print()
    peers = {(n.split(" (")[0], step): med for n, step, _, med in peer_rows}
    print("| model | step | compile/first call (s) | time per call (ms) | jdet speed vs torch peer |")
    print("|---|---|---:|---:|---:|")
    for name, step, first, med in rows + peer_rows:
        base = name.split(" (")[0]
        ratio = ""
        if name.endswith("(jdet)") and (base, step) in peers:
            ratio = f"{peers[(base, step)] / med:.2f}×"
        print(f"| {name} | {step} | {first:.2f} | {med * 1e3:.1f} | {ratio} |")


def refdet_train_step(args):
    """(jitted donated step, state, batch, rng, (n, q, k)): the RefDet train step on random data
    (also `scripts/bench_train.py`'s RefDet row)."""
    import functools

    from jdet.models.refdet import RefDet, refdet_param_groups
    from jdet.optim import OptimConfig, make_optimizer
    from jdet.steps import create_train_state, train_step

    n, q, k = 2, args.batch // 2, 3
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    batch = dict(
        query=jax.random.uniform(keys[0], (n * q, args.image, args.image, 3)),
        support=jax.random.uniform(keys[1], (n * q, n, k, 256, 256, 3)),
        support_mask=jnp.ones((n * q, n), bool),
        boxes=jnp.tile(jnp.array([[[40.0, 50.0, 120.0, 160.0]]]), (n * q, 1, 1)),
        labels=jnp.zeros((n * q, 1), jnp.int32),
        box_mask=jnp.ones((n * q, 1), bool),
    )
    model = RefDet(support_groups=args.episodes)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))["params"]
    tx = make_optimizer(OptimConfig(total_steps=1000), params, refdet_param_groups(params, 6))
    state = create_train_state(model, tx, jax.random.PRNGKey(0), batch)
    weights = dict(box=7.5, cls=0.5, dfl=0.75, supcon=1.2, cpe=0.6, triplet=0.3)
    step = jax.jit(functools.partial(train_step, loss_weights=weights), donate_argnums=0)
    return step, state, batch, jax.random.PRNGKey(1), (n, q, k)


def bench_step(args) -> None:
    """Full RefDet train step (YOLOv8n + DINOv3 ViT-S/16, 6 terms, AdamW) on random data."""
    step, state, batch, rng, (n, q, k) = refdet_train_step(args)
    t0 = time.perf_counter()
    state, m = step(state, batch, rng)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch, rng)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"RefDet train step (YOLOv8n + DINOv3 ViT-S/16, {n}-way {k}-shot, {n * q} queries at "
          f"{args.image}², support_groups={args.episodes}, 6 terms, AdamW); jax {jax.__version__} ({jax.devices()[0].platform})")
    print()
    print("| compile + first step (s) | step (s) | query images/s |")
    print("|---:|---:|---:|")
    print(f"| {first:.1f} | {med:.2f} | {n * q / med:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    add_losses_arguments(sub.add_parser("losses", help="loss_terms and per-term gradient cost"))
    p = sub.add_parser("models", help="query branch and support encoder, jdet vs torch")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-torch", action="store_true", help="skip the torch peers")
    p = sub.add_parser("step", help="full RefDet train step")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--episodes", type=int, default=1,
                   help="support_groups: episodes per batch sharing a support set (0: per query)")
    from bench_data import add_arguments as add_data_arguments
    from bench_data import bench_data

    add_data_arguments(sub.add_parser("data", help="episodic input pipeline throughput"))
    from bench_infer import add_arguments as add_infer_arguments
    from bench_infer import bench_infer
    from bench_train import add_arguments as add_train_arguments
    from bench_train import bench_train

    add_train_arguments(sub.add_parser("train", help="train-step throughput, jdet vs ultralytics"))
    add_infer_arguments(sub.add_parser("infer", help="jdet.predict frames/s on a 640×360 video"))
    from bench_all import add_arguments as add_all_arguments
    from bench_all import bench_all

    add_all_arguments(sub.add_parser("all", help="every benchmark in one table (bench_all.py)"))
    args = parser.parse_args(argv)
    if args.what == "all":
        bench_all(args)
        return 0
    if args.what == "data":
        bench_data(args)
        return 0
    if args.what == "infer":
        bench_infer(args)
        return 0
    if args.what == "train":
        bench_train(args)
        return 0
    if args.what == "losses":
        bench_losses(args)
    elif args.what == "step":
        bench_step(args)
    elif args.what == "models":
        bench_models(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
