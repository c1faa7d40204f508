"""Where the jdet YOLOv8n train step's time goes on this machine (CPU), and the machine's peak.

    python scripts/profile_step.py parts [--repeats 7]      # timed pieces of the step, interleaved
    python scripts/profile_step.py trace [--top 40]         # jax.profiler trace, ms per op category
    python scripts/profile_step.py peak                     # float32 GFLOP/s of a big matmul, a 3×3 conv
    python scripts/profile_step.py flops                    # XLA cost_analysis of forward / step
    python scripts/profile_step.py ab [--repeats 10]        # plain vs fast layers, interleaved
    python scripts/profile_step.py vs [--repeats 10] [--torch-threads 1,2]
        # jdet's step vs ultralytics' (needs torch + ultralytics), alternating step by step
    python scripts/profile_step.py flags --flags "A;B" [--b fast] [--model refdet]   # XLA_FLAGS variants, alternating

The step is `scripts/bench_train.py`'s `yolo` row (YOLOv8n, 1 class, detection loss with
ultralytics' gains, `jdet.steps.train_step` with optax.adamw), batch 8 at 320². "parts" times,
in rounds that interleave the pieces (so that load from other processes hits each alike):

  eval fwd      the network forward with running BN statistics (no loss)
  train fwd     the network forward with batch statistics (no loss)
  net fwd+bwd   grad of sum(head outputs · fixed random cotangent) w.r.t. params (no loss)
  loss fwd+bwd  grad of the detection loss w.r.t. fixed head outputs (assigner included)
  value+grad    the whole loss_fn's value_and_grad (network + loss), no optimiser
  adamw         optax.adamw update + apply_updates on a parameter-shaped tree
  step          the full jitted, donated train step (what bench_train times)

"ab" times the full step built with `jdet.models.layers.layer_impl("plain")` against the
default ("fast") layers, interleaved step by step, and checks that the two agree.

Medians (and minima) in ms; the machine is shared, so read ratios inside one run.

"vs" keeps one ultralytics process per --torch-threads value alive beside the jdet step (this
process) and alternates single steps between them (jdet, torch 1, torch 2, jdet, …, with a short
pause between), so that every row sees the same machine load; it prints per-round ratios.
"ab" and "vs" also print GFLOP/s from XLA's cost analysis of the jdet step (the same FLOP count
is used for the ultralytics step: the same network, loss and optimiser).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _setup(batch=8, image=320, boxes=4):
    import bench_train

    args = argparse.Namespace(batch=batch, image=image, boxes=boxes)
    return bench_train._yolo_train_step(args)


def _step_flop(batch: int, image: int) -> float:
    """XLA's FLOP count of the jdet step, from its build with XLA's convolutions (XLA cannot
    count the FLOPs inside oneDNN's custom calls; the math is the same)."""
    from jdet.models.onednn_conv import cpu_conv

    with cpu_conv("xla"):
        step, state, batch_, rng = _setup(batch, image)
        ca = step.lower(state, batch_, rng).compile().cost_analysis()
    return (ca[0] if isinstance(ca, list) else ca)["flops"]


def _timeit(fns: dict, repeats: int, inner: int = 1) -> dict:
    import jax

    times = {k: [] for k in fns}
    for f in fns.values():  # compile + warm
        jax.block_until_ready(f())
    for _ in range(repeats):
        for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                out = f()
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / inner)
    return times


def parts(args) -> None:
    import functools

    import jax
    import jax.numpy as jnp
    import optax
    from bench_train import YOLO_GAINS

    from jdet.losses import LossConfig, loss_terms, weighted_total

    step, state, batch, rng = _setup(args.batch, args.image)
    apply = state.apply_fn
    # copies: the step donates (and so deletes) the state's own arrays
    variables = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})

    eval_fwd = jax.jit(lambda v, b: apply(v, b, train=False))
    train_fwd = jax.jit(lambda v, b: apply(v, b, train=True, mutable=["batch_stats"]))
    out0 = eval_fwd(variables, batch)
    cot = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(3), x.shape, x.dtype)
                       if x.ndim > 2 else jnp.zeros_like(x), out0)

    def net_loss(params, stats, b):
        out, _ = apply({"params": params, "batch_stats": stats}, b, train=True,
                       mutable=["batch_stats"])
        return sum(jnp.vdot(out[k], cot[k]) for k in ("dist", "cls"))

    net_grad = jax.jit(jax.grad(net_loss))
    cfg = LossConfig.ultralytics()
    wiou = state.wiou_state

    def loss_only(heads, b):
        out = dict(out0, dist=heads[0], cls=heads[1])
        terms, _ = loss_terms(out, b, cfg, wiou, train=True)
        return weighted_total(terms, YOLO_GAINS)

    loss_grad = jax.jit(jax.value_and_grad(loss_only))

    def full_loss(params, stats, b):
        out, _ = apply({"params": params, "batch_stats": stats}, b, train=True,
                       mutable=["batch_stats"])
        terms, _ = loss_terms(out, b, cfg, wiou, train=True)
        return weighted_total(terms, YOLO_GAINS)

    vg = jax.jit(jax.value_and_grad(full_loss))
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    grads = jax.tree.map(jnp.ones_like, state.params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def adam(params, opt_state, g):
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state

    p_copy = jax.tree.map(jnp.copy, state.params)
    o_copy = jax.tree.map(jnp.copy, state.opt_state)
    holder = {"state": state, "p": p_copy, "o": o_copy}

    def run_step():
        holder["state"], m = step(holder["state"], batch, rng)
        return m

    def run_adam():
        holder["p"], holder["o"] = adam(holder["p"], holder["o"], grads)
        return holder["p"]

    heads = (out0["dist"], out0["cls"])
    fns = {
        "eval fwd": lambda: eval_fwd(variables, batch),
        "train fwd": lambda: train_fwd(variables, batch),
        "net fwd+bwd": lambda: net_grad(variables["params"], variables["batch_stats"], batch),
        "loss fwd+bwd": lambda: loss_grad(heads, batch),
        "value+grad": lambda: vg(variables["params"], variables["batch_stats"], batch),
        "adamw": run_adam,
        "step": run_step,
    }
    times = _timeit(fns, args.repeats)
    print(f"batch {args.batch} at {args.image}²; load average {os.getloadavg()}")
    print("| piece | median ms | min ms |")
    print("|---|---:|---:|")
    for k, t in times.items():
        print(f"| {k} | {statistics.median(t) * 1e3:.1f} | {min(t) * 1e3:.1f} |")


def _hlo_index(hlo_text: str) -> dict:
    """HLO instruction name → (opcode, shape, op_name metadata, opcodes inside its fusion)."""
    import collections
    import re

    bodies: dict = {}
    info = {}
    cur = None
    for ln in hlo_text.splitlines():
        s = ln.strip()
        if s.endswith("{") and (s.startswith(("%", "ENTRY")) or "computation" in s):
            cur = "ENTRY" if s.startswith("ENTRY") else s.split()[0].lstrip("%")
            bodies[cur] = collections.Counter()
            continue
        m = re.match(r"^(?:ROOT )?%?([\w.\-]+) = (\S+) (\S+?)\(", s)
        if m and cur:
            name, shape, op = m.groups()
            bodies[cur][op] += 1
            opn = re.search(r'op_name="([^"]*)"', s)
            calls = re.search(r"calls=%?([\w.\-]+)", s)
            info.setdefault(name, (op, shape, opn.group(1) if opn else "", calls.group(1) if calls else None))
    return {k: (op, shape, opn, bodies.get(c, {})) for k, (op, shape, opn, c) in info.items()}


def _classify(name: str, op: str, opn: str, inner) -> tuple[str, str]:
    """(kind, phase) of one executed HLO op."""
    import re

    if "ffi_call" in name or op == "custom-call":
        kind = "oneDNN convolutions (custom calls)"
    elif op == "convolution" or inner.get("convolution"):
        kind = "convolution (3×3)"
    elif op == "dot" or inner.get("dot"):
        kind = "dot (1×1 conv)"
    elif inner.get("select-and-scatter") or inner.get("reduce-window") or "iota" in name:
        kind = "max-pool (fwd/bwd)"
    elif inner.get("reduce") or op == "reduce":
        kind = "reductions (BN stats/grads, loss)"
    elif "transpose" in name or "copy" in name or op in ("copy", "transpose"):
        kind = "transpose/copy (layouts)"
    elif inner.get("concatenate") or op == "concatenate":
        kind = "concatenate"
    elif op == "sort" or inner.get("sort"):
        kind = "sort/top-k"
    else:
        kind = "elementwise (BN, SiLU, adds, loss)"
    if "QueryDetector" in opn:
        phase = "network backward" if "transpose(" in opn else "network forward"
    elif re.search(r"loss|assign|bbox|dfl|iou|top_k|anchor|take_along", opn):
        phase = "loss + assigner"
    elif opn:
        phase = "optimizer/step"
    else:
        phase = "(no metadata: layout copies, constants)"
    return kind, phase


def trace(args) -> None:
    import collections
    import re
    import tempfile

    import jax

    from jdet.models.layers import layer_impl

    with layer_impl(args.impl):
        step, state, batch, rng = _setup(args.batch, args.image)
        compiled = step.lower(state, batch, rng).compile()
    info = _hlo_index(compiled.as_text())
    state, m = compiled(state, batch, rng)
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        start = time.perf_counter()
        for _ in range(args.repeats):
            state, m = compiled(state, batch, rng)
            jax.block_until_ready(m)
        wall = (time.perf_counter() - start) / args.repeats
        jax.profiler.stop_trace()
        pd = jax.profiler.ProfileData.from_file(str(next(pathlib.Path(d).rglob("*.xplane.pb"))))
    dur: collections.Counter = collections.Counter()
    untraced = 0.0  # thunks without their own trace event (XLA's Eigen convolutions and dots)
    for plane in pd.planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLA"):
                for ev in line.events:
                    if ev.name in info:
                        dur[ev.name] += ev.duration_ns / 1e6 / args.repeats
                    elif ev.name == "ThunkExecutor::Execute" and line.name.startswith("tf_XLAEigen"):
                        untraced += ev.duration_ns / 1e6 / args.repeats
    total = sum(dur.values()) + untraced
    kinds, phases, layers = collections.Counter(), collections.Counter(), collections.Counter()
    if untraced:
        kinds["Eigen convolutions/dots (untraced thunks)"] = untraced
        phases["(untraced Eigen thunks)"] = untraced
    for name, ms in dur.items():
        op, _, opn, inner = info[name]
        kind, phase = _classify(name, op, opn, inner)
        kinds[kind] += ms
        phases[phase] += ms
        lm = re.search(r"yolo/(model_\d+(?:/cv\d_\d)?)", opn)
        layers[(lm.group(1) if lm else "-", phase)] += ms
    print(f"impl {args.impl}: wall {wall * 1e3:.0f} ms/step under the profiler; XLA op time "
          f"{total:.0f} ms/step (ops of the 2-thread pool; independent ops may overlap); "
          f"load average {os.getloadavg()}")
    for title, table in (("op kind", kinds), ("phase", phases)):
        print(f"\n| {title} | ms/step (op time) | % |\n|---|---:|---:|")
        for k, v in table.most_common():
            print(f"| {k} | {v:.1f} | {100 * v / total:.0f} |")
    print("\n| layer, phase | ms/step |\n|---|---:|")
    for (layer, phase), v in layers.most_common(args.top // 2):
        print(f"| {layer}, {phase} | {v:.1f} |")
    print(f"\ntop {args.top} ops (ms/step):")
    for name, v in dur.most_common(args.top):
        op, shape, opn, inner = info[name]
        print(f"{v:7.1f} {name[:30]:30s} {shape[:28]:28s} {_classify(name, op, opn, inner)[0][:18]:18s} "
              f"{opn.split('/', 1)[-1][-70:]}")


def peak(args) -> None:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 80, 80, 64), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 64, 64), jnp.float32)
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    flops = {"matmul 2048³": 2 * n**3, "conv 3×3 64→64 8×80×80": 2 * 8 * 80 * 80 * 9 * 64 * 64}
    times = _timeit({"matmul 2048³": lambda: mm(a, b),
                     "conv 3×3 64→64 8×80×80": lambda: conv(x, w)}, args.repeats)
    print(f"load average {os.getloadavg()}")
    for k, t in times.items():
        print(f"{k}: best {min(t) * 1e3:.1f} ms → {flops[k] / min(t) / 1e9:.0f} GFLOP/s "
              f"(median {flops[k] / statistics.median(t) / 1e9:.0f})")


def flops(args) -> None:
    import jax

    from jdet.models.onednn_conv import cpu_conv

    with cpu_conv("xla"):  # XLA cannot count FLOPs inside oneDNN's custom calls
        step, state, batch, rng = _setup(args.batch, args.image)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        fwd = jax.jit(lambda v, b: state.apply_fn(v, b, train=False)).lower(variables, batch)
        fwd = fwd.compile()
        st = step.lower(state, batch, rng).compile()
    for name, c in (("eval forward", fwd), ("train step", st)):
        ca = c.cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        f = ca.get("flops", float("nan"))
        print(f"{name}: {f / 1e9:.2f} GFLOP per batch of {args.batch} = "
              f"{f / 1e9 / args.batch:.2f} per image; bytes accessed {ca.get('bytes accessed', 0) / 1e9:.2f} GB")


def _variant(spec: str):
    """"plain", "fast" or "fast-OPT1-OPT2" (fast with jdet.models.layers._FAST_OPTS turned off)."""
    import contextlib

    from jdet.models import layers

    impl, *off = spec.split("-")

    @contextlib.contextmanager
    def ctx():
        old = dict(layers._FAST_OPTS)
        layers._FAST_OPTS.update({k: False for k in off})
        try:
            with layers.layer_impl(impl):
                yield
        finally:
            layers._FAST_OPTS.update(old)

    return ctx()


def ab(args) -> None:
    import jax

    built = {}
    for spec in (args.a, args.b):
        with _variant(spec):
            step, state, batch, rng = _setup(args.batch, args.image)
            compiled = step.lower(state, batch, rng).compile()
        built[spec] = {"step": compiled, "state": state}
    flop = _step_flop(args.batch, args.image)
    outs = {}  # one step each from the same initial state: the same loss and grad norm
    for spec, b in built.items():
        b["state"], outs[spec] = b["step"](b["state"], batch, rng)
    for k in ("loss", "grad_norm"):
        print(k, {spec: f"{float(o[k]):.7g}" for spec, o in outs.items()})
    times = {k: [] for k in built}
    for _ in range(args.repeats):
        for spec, b in built.items():
            start = time.perf_counter()
            b["state"], m = b["step"](b["state"], batch, rng)
            jax.block_until_ready(m)
            times[spec].append(time.perf_counter() - start)
    ta, tb = np.array(times[args.a]), np.array(times[args.b])
    print(f"load average {os.getloadavg()}; {args.b} step FLOP {flop / 1e9:.1f} G")
    for k, t in ((args.a, ta), (args.b, tb)):
        print(f"{k}: median {np.median(t) * 1e3:.0f} ms, min {t.min() * 1e3:.0f} ms")
    print(f"speed-up {args.a} → {args.b}: median of per-round ratios {np.median(ta / tb):.3f}, "
          f"ratio of minima {ta.min() / tb.min():.3f}")


def _torch_server(threads: int) -> None:
    """Child: build bench_train's ultralytics step, then one timed step per line on stdin."""
    import bench_train

    args = argparse.Namespace(batch=int(os.environ["PS_BATCH"]), image=int(os.environ["PS_IMAGE"]),
                              boxes=4, repeats=0)
    import torch

    torch.set_num_threads(threads)
    step = bench_train.ultralytics_step(args)
    step()
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        loss = step()
        print(f"{time.perf_counter() - start} {loss}", flush=True)


def vs(args) -> None:
    import subprocess

    import jax

    step, state, batch, rng = _setup(args.batch, args.image)
    compiled = step.lower(state, batch, rng).compile()
    flop = _step_flop(args.batch, args.image)
    state, m = compiled(state, batch, rng)
    jax.block_until_ready(m)
    env = dict(os.environ, PS_BATCH=str(args.batch), PS_IMAGE=str(args.image))
    threads = [int(t) for t in args.torch_threads.split(",") if t]
    procs = {}
    for t in threads:
        procs[t] = subprocess.Popen([sys.executable, __file__, "_torch", str(t)], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for t, pr in procs.items():
        while (line := pr.stdout.readline()) and line.strip() != "ready":  # skip ultralytics' logs
            pass
        assert line, f"ultralytics step with {t} threads failed to start"
    times = {"jdet": [], **{f"torch {t}": [] for t in threads}}
    loads = []
    for _ in range(args.repeats):
        time.sleep(0.05)
        start = time.perf_counter()
        state, m = compiled(state, batch, rng)
        jax.block_until_ready(m)
        times["jdet"].append(time.perf_counter() - start)
        for t, pr in procs.items():
            time.sleep(0.05)
            pr.stdin.write("go\n")
            pr.stdin.flush()
            times[f"torch {t}"].append(float(pr.stdout.readline().split()[0]))
        loads.append(os.getloadavg()[0])
    for pr in procs.values():
        pr.stdin.close()
        pr.wait()
    jd = np.array(times["jdet"])
    print(f"batch {args.batch} at {args.image}², {args.repeats} rounds; load average (1 min) during: "
          f"{min(loads):.1f}–{max(loads):.1f}; step FLOP (XLA cost analysis) {flop / 1e9:.1f} G")
    print("| row | median ms | min ms | images/s (median) | GFLOP/s (median, min) | "
          "torch/jdet time, median of per-round ratios |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, t in times.items():
        t = np.array(t)
        ratio = "—" if k == "jdet" else f"{np.median(t / jd):.2f}×"
        print(f"| {k} | {np.median(t) * 1e3:.0f} | {t.min() * 1e3:.0f} | "
              f"{args.batch / np.median(t):.1f} | {flop / np.median(t) / 1e9:.0f}, "
              f"{flop / t.min() / 1e9:.0f} | {ratio} |")


def _jdet_server(spec: str) -> None:
    """Child: build the jdet step (variant spec, XLA_FLAGS from the environment), then one
    timed step per line on stdin."""
    import jax

    with _variant(spec):
        batch_size, image = int(os.environ["PS_BATCH"]), int(os.environ["PS_IMAGE"])
        if os.environ.get("PS_MODEL", "yolo") == "refdet":
            import bench

            step, state, batch, rng, _ = bench.refdet_train_step(
                argparse.Namespace(batch=batch_size, image=image, episodes=1))
        else:
            step, state, batch, rng = _setup(batch_size, image)
        compiled = step.lower(state, batch, rng).compile()
    state, m = compiled(state, batch, rng)
    jax.block_until_ready(m)
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        state, m = compiled(state, batch, rng)
        jax.block_until_ready(m)
        print(f"{time.perf_counter() - start} {float(m['loss'])}", flush=True)


def flags(args) -> None:
    """Alternate steps between jdet processes that differ only in XLA_FLAGS (--flags A;B;…)."""
    import subprocess

    variants = args.flags.split(";")
    procs = []
    for fl in variants:
        # "--flag" words go to XLA_FLAGS, NAME=VALUE words to the environment (for example
        # JDET_XLA_CPU_CONV=eigen: XLA:CPU convolutions off YNNPACK, jdet/_xla_defaults.py)
        words = fl.split()
        extra = dict(w.split("=", 1) for w in words if not w.startswith("--"))
        xla = " ".join(w for w in words if w.startswith("--"))
        env = dict(os.environ, PS_BATCH=str(args.batch), PS_IMAGE=str(args.image), XLA_FLAGS=xla,
                   PS_MODEL=args.model, **extra)
        procs.append(subprocess.Popen([sys.executable, __file__, "_jdet", args.b], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for pr in procs:
        while (line := pr.stdout.readline()) and line.strip() != "ready":
            pass
        assert line, "a jdet server failed to start"
    times = [[] for _ in procs]
    for _ in range(args.repeats):
        for i, pr in enumerate(procs):
            time.sleep(0.05)
            pr.stdin.write("go\n")
            pr.stdin.flush()
            times[i].append(float(pr.stdout.readline().split()[0]))
    for pr in procs:
        pr.stdin.close()
        pr.wait()
    base = np.array(times[0])
    print(f"load average {os.getloadavg()}")
    for fl, t in zip(variants, times):
        t = np.array(t)
        print(f"{fl or '(none)'}: median {np.median(t) * 1e3:.0f} ms, min {t.min() * 1e3:.0f} ms, "
              f"speed-up vs first: {np.median(base / t):.3f} (per-round), {base.min() / t.min():.3f} (minima)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["parts", "trace", "peak", "flops", "ab", "vs", "flags"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--impl", default="fast", choices=["fast", "plain"], help="trace: layer impl")
    p.add_argument("--a", default="plain", help="ab: first variant (plain, fast, fast-OPT…)")
    p.add_argument("--b", default="fast", help="ab: second variant")
    p.add_argument("--torch-threads", default="1,2", help="vs: ultralytics rows (thread counts)")
    p.add_argument("--flags", default="", help="flags: XLA_FLAGS variants separated by ';'")
    p.add_argument("--model", default="yolo", choices=["yolo", "refdet"],
                   help="flags: the step to time (refdet: scripts/bench.py's RefDet step)")
    if sys.argv[1:2] == ["_jdet"]:
        _jdet_server(sys.argv[2])
        sys.exit()
    if sys.argv[1:2] == ["_torch"]:
        _torch_server(int(sys.argv[2]))
        sys.exit()
    a = p.parse_args()
    {"parts": parts, "trace": trace, "peak": peak, "flops": flops, "ab": ab, "vs": vs, "flags": flags}[a.what](a)
