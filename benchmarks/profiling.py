"""Where the jdet YOLOv8n train step's time goes on this machine (CPU), and the machine's peak.

    python -m benchmarks profile parts [--repeats 7]   # timed pieces of the step, interleaved
    python -m benchmarks profile trace [--top 40] [--model refdet | --config FILE[:ARG]]
        # jax.profiler trace: ms per op category, per model part (forward/backward) and layer
    python -m benchmarks profile peak                  # GFLOP/s of a 2048³ matmul, a 3×3 conv
    python -m benchmarks profile flops                 # XLA cost_analysis of forward / step
    python -m benchmarks profile ab [--repeats 10]     # plain vs fast layers, interleaved
    python -m benchmarks profile vs [--repeats 10] [--torch-threads 1,2]
        # jdet's step vs ultralytics' (needs torch + ultralytics), alternating step by step
    python -m benchmarks profile flags --flags "A;B" [--b fast] [--model refdet | --config F]
        # XLA_FLAGS / environment variants, alternating (with each variant's compile time)

The step is `benchmarks.steps.build_train_step("yolo")` (the `train` benchmark's YOLOv8n row:
1 class, detection loss with ultralytics' gains, `jdet.training.steps.train_step` with
optax.adamw), batch 8 at 320². "parts" times, in rounds that interleave the pieces (so that
load from other processes hits each alike):

  eval fwd      the network forward with running BN statistics (no loss)
  train fwd     the network forward with batch statistics (no loss)
  net fwd+bwd   grad of sum(head outputs · fixed random cotangent) w.r.t. params (no loss)
  loss fwd+bwd  grad of the detection loss w.r.t. fixed head outputs (assigner included)
  value+grad    the whole loss_fn's value_and_grad (network + loss), no optimiser
  adamw         optax.adamw update + apply_updates on a parameter-shaped tree
  step          the full jitted, donated train step (what the `train` benchmark times)

"ab" times the full step built with Flax's own layers (`LayerImpl(fast=False)`, variant
"plain") against jdet's fast layers ("fast"; "fast-maxpool" etc. turn parts of the fast path
off, `jdet.models.impl.FAST_PARTS`), interleaved step by step, and checks that the two agree.

Medians (and minima) in ms; the machine is shared, so read ratios inside one run.

"vs" keeps one ultralytics process per --torch-threads value alive beside the jdet step (this
process) and alternates single steps between them (jdet, torch 1, torch 2, jdet, …, with a short
pause between), so that every row sees the same machine load; it prints per-round ratios.
"ab" and "vs" also print GFLOP/s from XLA's cost analysis of the jdet step (the same FLOP count
is used for the ultralytics step: the same network, loss and optimiser).
"flags" does the same with jdet step servers that differ only in their environment.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from benchmarks import flops as xla
from benchmarks.peak import measure_kernels
from benchmarks.proc import ROOT
from benchmarks.steps import YOLO_GAINS, TrainStep, build_config_step, build_train_step
from benchmarks.timing import time_call, time_calls

SERVE = "_serve"  # the hidden `python -m benchmarks` command of a step server process
WHAT = ("parts", "trace", "peak", "flops", "ab", "vs", "flags")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=WHAT)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--impl", default="fast", help="trace: layer variant (fast, plain, fast-OPT…)")
    p.add_argument("--a", default="plain", help="ab: first layer variant (plain, fast, fast-OPT…)")
    p.add_argument("--b", default="fast", help="ab: second variant; flags: the variant served")
    p.add_argument("--torch-threads", default="1,2", help="vs: ultralytics rows (thread counts)")
    p.add_argument("--flags", default="", help="flags: XLA_FLAGS variants separated by ';'")
    p.add_argument(
        "--model",
        default="yolo",
        choices=["yolo", "refdet"],
        help="trace, flags: the step (refdet: the `step` benchmark's RefDet step)",
    )
    p.add_argument(
        "--config",
        default="",
        help="trace, flags: the train step of a training config instead, FILE[:ARG] "
        "(e.g. configs/quickstart.py, configs/refdet_n.py:stage=2)",
    )


def main(args) -> None:
    commands = {"parts": parts, "trace": trace, "peak": peak, "flops": flops, "ab": ab, "vs": vs}
    (commands | {"flags": flags})[args.what](args)


def _compiled(model: str, batch: int, image: int, layers: str = "fast") -> TrainStep:
    """The train step (in a layer variant, see `build_train_step`; model "config:FILE[:ARG]":
    a training config's step, `build_config_step`), its jit replaced by the compiled
    executable; `case.compile_s` says how long compiling took."""
    if model.startswith("config:"):
        file, _, arg = model.removeprefix("config:").partition(":")
        case = build_config_step(file, arg or None)
    else:
        case = build_train_step(model, batch=batch, image=image, layers=layers)
    lowered = case.lower()
    start = time.perf_counter()
    case.step = lowered.compile()
    case.compile_s = time.perf_counter() - start
    return case


def _step_flop(batch: int, image: int) -> float:
    """XLA's FLOP count of the jdet YOLOv8n step (built with XLA's convolutions)."""
    flop, _ = xla.step_flops("yolo", batch=batch, image=image)
    return flop if flop is not None else float("nan")


def parts(args) -> None:
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from jdet.losses import LossConfig, loss_terms, weighted_total

    case = build_train_step("yolo", batch=args.batch, image=args.image)
    state, batch = case.state, case.batch
    apply = state.apply_fn
    # copies: the step donates (and so deletes) the state's own arrays
    variables = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})

    eval_fwd = jax.jit(lambda v, b: apply(v, b, train=False))
    train_fwd = jax.jit(lambda v, b: apply(v, b, train=True, mutable=["batch_stats"]))
    out0 = eval_fwd(variables, batch)
    cot = jax.tree.map(
        lambda x: (
            jax.random.normal(jax.random.PRNGKey(3), x.shape, x.dtype)
            if x.ndim > 2
            else jnp.zeros_like(x)
        ),
        out0,
    )

    def net_loss(params, stats, b):
        out, _ = apply(
            {"params": params, "batch_stats": stats}, b, train=True, mutable=["batch_stats"]
        )
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
        out, _ = apply(
            {"params": params, "batch_stats": stats}, b, train=True, mutable=["batch_stats"]
        )
        terms, _ = loss_terms(out, b, cfg, wiou, train=True)
        return weighted_total(terms, YOLO_GAINS)

    vg = jax.jit(jax.value_and_grad(full_loss))
    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    grads = jax.tree.map(jnp.ones_like, state.params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def adam(params, opt_state, g):
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state

    holder = {
        "p": jax.tree.map(jnp.copy, state.params),
        "o": jax.tree.map(jnp.copy, state.opt_state),
    }

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
        "step": case.run,
    }
    timings = time_calls(fns, args.repeats)
    print(f"batch {args.batch} at {args.image}²; load average {os.getloadavg()}")
    print("| piece | median ms | min ms |")
    print("|---|---:|---:|")
    for k, t in timings.items():
        print(f"| {k} | {t.median_s * 1e3:.1f} | {t.best_s * 1e3:.1f} |")


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
            info.setdefault(
                name, (op, shape, opn.group(1) if opn else "", calls.group(1) if calls else None)
            )
    return {k: (op, shape, opn, bodies.get(c, {})) for k, (op, shape, opn, c) in info.items()}


# RefDet's submodules (jdet.models.refdet) → the part of the model they belong to
REFDET_MODULES = {
    "support_encoder": "support encoder (ViT)",
    "projections": "prototype + triplet projections",
    "triplet_projection": "prototype + triplet projections",
    "backbone": "query backbone (YOLOv8)",
    "fusion": "fusion (PSALM)",
    "head": "dual head + contrastive head",
    "contrastive": "dual head + contrastive head",
}


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
    module = re.search(r"/(" + "|".join(REFDET_MODULES) + r")(?:/|$)", opn)
    if module:  # a RefDet step: the module, forward or backward
        part = REFDET_MODULES[module.group(1)]
        phase = f"{part}, {'backward' if 'transpose(' in opn else 'forward'}"
    elif "QueryDetector" in opn:
        phase = "network backward" if "transpose(" in opn else "network forward"
    elif re.search(r"loss|assign|bbox|dfl|iou|top_k|anchor|take_along|supcon|triplet|cpe", opn):
        phase = "loss + assigner"
    elif opn:
        phase = "optimizer/step"
    else:
        phase = "(no metadata: layout copies, constants)"
    return kind, phase


def _uncovered_ns(spans: list, ops: list) -> float:
    """Nanoseconds of the intervals `spans` that no interval of `ops` covers (one thread's
    events: intervals of each list do not overlap each other)."""
    ops = sorted(ops)
    total, i = 0.0, 0
    for start, end in sorted(spans):
        covered = 0.0
        while i < len(ops) and ops[i][1] <= start:
            i += 1
        j = i
        while j < len(ops) and ops[j][0] < end:
            covered += min(ops[j][1], end) - max(ops[j][0], start)
            j += 1
        total += max(end - start - covered, 0.0)
    return total


def trace(args) -> None:
    import collections
    import re
    import tempfile

    import jax

    model = f"config:{args.config}" if args.config else args.model
    case = _compiled(model, args.batch, args.image, args.impl)
    print(case.description)
    info = _hlo_index(case.step.as_text())
    jax.block_until_ready(case.run())
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        wall = time_call(case.run, args.repeats, warmup=False).mean_s
        jax.profiler.stop_trace()
        pd = jax.profiler.ProfileData.from_file(str(next(pathlib.Path(d).rglob("*.xplane.pb"))))
    dur: collections.Counter = collections.Counter()
    # A pool thread's "ThunkExecutor::Execute" event spans a run of thunks, the traced ops
    # among them included: only the part of it that no op event covers is untraced work.
    untraced, pool_threads = 0.0, 0
    for plane in pd.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            spans, ops = [], []
            for ev in line.events:
                if ev.name in info:
                    dur[ev.name] += ev.duration_ns / 1e6 / args.repeats
                    ops.append((ev.start_ns, ev.start_ns + ev.duration_ns))
                elif ev.name == "ThunkExecutor::Execute" and line.name.startswith("tf_XLAEigen"):
                    spans.append((ev.start_ns, ev.start_ns + ev.duration_ns))
            pool_threads += bool(spans)
            untraced += _uncovered_ns(spans, ops) / 1e6 / args.repeats
    total = sum(dur.values()) + untraced
    kinds, phases, layers = collections.Counter(), collections.Counter(), collections.Counter()
    if untraced:
        kinds["untraced (inside the pool's thunk runs, outside any op event)"] = untraced
        phases["(untraced)"] = untraced
    for name, ms in dur.items():
        op, _, opn, inner = info[name]
        kind, phase = _classify(name, op, opn, inner)
        kinds[kind] += ms
        phases[phase] += ms
        lm = re.search(r"(?:yolo|backbone)/(model_\d+(?:/cv\d_\d)?)", opn) or re.search(
            r"/((?:support_encoder|fusion|head)/[^/]+)", opn
        )
        layers[(lm.group(1) if lm else "-", phase)] += ms
    print(
        f"impl {args.impl}: wall {wall * 1e3:.0f} ms/step under the profiler; XLA op time "
        f"{total:.0f} ms/step over {pool_threads} pool threads, busy "
        f"{100 * total / max(pool_threads * wall * 1e3, 1e-9):.0f}% of their wall time; "
        f"load average {os.getloadavg()}"
    )
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
        kind = _classify(name, op, opn, inner)[0]
        print(
            f"{v:7.1f} {name[:30]:30s} {shape[:28]:28s} {kind[:18]:18s} "
            f"{opn.split('/', 1)[-1][-70:]}"
        )


def peak(args) -> None:
    """The `peak` benchmark's meter on a 2048³ matmul and YOLOv8n's 80×80×64→64 3×3 conv."""
    kernels = measure_kernels([(2048, 2048, 2048)], [(8, 80, 64, 64)], args.repeats)
    print(f"load average {os.getloadavg()}")
    for k in kernels:
        print(
            f"{k['name']}: best {k['best_s'] * 1e3:.1f} ms → {k['gflops_best']:.0f} GFLOP/s "
            f"(median {k['gflops']:.0f})"
        )


def flops(args) -> None:
    import jax

    # XLA's convolutions: XLA cannot count FLOPs inside oneDNN's custom calls
    case = build_train_step("yolo", batch=args.batch, image=args.image, conv="xla")
    variables = {"params": case.state.params, "batch_stats": case.state.batch_stats}
    fwd = jax.jit(lambda v, b: case.state.apply_fn(v, b, train=False))
    compiled = {
        "eval forward": fwd.lower(variables, case.batch).compile(),
        "train step": case.lower().compile(),
    }
    for name, stage in compiled.items():
        cost = xla.xla_cost(stage) or {}
        f = cost.get("flops", float("nan"))
        print(
            f"{name}: {f / 1e9:.2f} GFLOP per batch of {args.batch} = "
            f"{f / 1e9 / args.batch:.2f} per image; bytes accessed "
            f"{cost.get('bytes accessed', 0) / 1e9:.2f} GB"
        )


def ab(args) -> None:
    built = {spec: _compiled("yolo", args.batch, args.image, spec) for spec in (args.a, args.b)}
    flop = _step_flop(args.batch, args.image)
    # one step each from the same initial state: the same loss and grad norm
    outs = {spec: case.run() for spec, case in built.items()}
    for k in ("loss", "grad_norm"):
        print(k, {spec: f"{float(o[k]):.7g}" for spec, o in outs.items()})
    timings = time_calls(
        {spec: case.run for spec, case in built.items()}, args.repeats, warmup=False
    )
    ta, tb = np.array(timings[args.a].times), np.array(timings[args.b].times)
    print(f"load average {os.getloadavg()}; {args.b} step FLOP {flop / 1e9:.1f} G")
    for k, t in ((args.a, ta), (args.b, tb)):
        print(f"{k}: median {np.median(t) * 1e3:.0f} ms, min {t.min() * 1e3:.0f} ms")
    print(
        f"speed-up {args.a} → {args.b}: median of per-round ratios {np.median(ta / tb):.3f}, "
        f"ratio of minima {ta.min() / tb.min():.3f}"
    )


def _start_servers(commands: list[list[str]], envs: list[dict]) -> list[subprocess.Popen]:
    """Step servers (`python -m benchmarks _serve …`), each ready for its first step."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks", SERVE, *command],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for command, env in zip(commands, envs)
    ]
    for command, pr in zip(commands, procs):
        while (line := pr.stdout.readline()) and not line.startswith("ready"):  # library logs
            pass
        if not line:
            raise SystemExit(f"step server {' '.join(command)} failed to start")
        pr.ready = line.split()[1:]  # what the server says about itself (jdet: compile seconds)
    return procs


def _remote_step(pr: subprocess.Popen) -> float:
    """One step in a server: the seconds it measured."""
    pr.stdin.write("go\n")
    pr.stdin.flush()
    return float(pr.stdout.readline().split()[0])


def _stop(procs: list[subprocess.Popen]) -> None:
    for pr in procs:
        pr.stdin.close()
        pr.wait()


def vs(args) -> None:
    import jax

    case = _compiled("yolo", args.batch, args.image)
    flop = _step_flop(args.batch, args.image)
    jax.block_until_ready(case.run())
    threads = [int(t) for t in args.torch_threads.split(",") if t]
    sizes = [str(args.batch), str(args.image)]
    procs = _start_servers(
        [["torch", str(t), *sizes] for t in threads], [dict(os.environ)] * len(threads)
    )
    times = {"jdet": [], **{f"torch {t}": [] for t in threads}}
    loads = []
    for _ in range(args.repeats):
        times["jdet"] += time_call(case.run, 1, warmup=False, pause_s=0.05).times
        for t, pr in zip(threads, procs):
            time.sleep(0.05)
            times[f"torch {t}"].append(_remote_step(pr))
        loads.append(os.getloadavg()[0])
    _stop(procs)
    jd = np.array(times["jdet"])
    print(
        f"batch {args.batch} at {args.image}², {args.repeats} rounds; load average (1 min) "
        f"during: {min(loads):.1f}–{max(loads):.1f}; step FLOP (XLA cost analysis) "
        f"{flop / 1e9:.1f} G"
    )
    print(
        "| row | median ms | min ms | images/s (median) | GFLOP/s (median, min) | "
        "torch/jdet time, median of per-round ratios |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for k, t in times.items():
        t = np.array(t)
        ratio = "—" if k == "jdet" else f"{np.median(t / jd):.2f}×"
        print(
            f"| {k} | {np.median(t) * 1e3:.0f} | {t.min() * 1e3:.0f} | "
            f"{args.batch / np.median(t):.1f} | {flop / np.median(t) / 1e9:.0f}, "
            f"{flop / t.min() / 1e9:.0f} | {ratio} |"
        )


def flags(args) -> None:
    """Alternate steps between jdet processes that differ only in XLA_FLAGS (--flags A;B;…)."""
    variants = args.flags.split(";")
    envs = []
    for fl in variants:
        # "--flag" words go to XLA_FLAGS, NAME=VALUE words to the environment (for example
        # JDET_XLA_CPU_CONV=eigen: XLA:CPU convolutions off YNNPACK, jdet/_xla_defaults.py)
        words = fl.split()
        extra = dict(w.split("=", 1) for w in words if not w.startswith("--"))
        xla_flags = " ".join(w for w in words if w.startswith("--"))
        envs.append(dict(os.environ, XLA_FLAGS=xla_flags, **extra))
    model = f"config:{args.config}" if args.config else args.model
    command = ["jdet", args.b, model, str(args.batch), str(args.image)]
    procs = _start_servers([command] * len(variants), envs)
    times = [[] for _ in procs]
    for _ in range(args.repeats):
        for i, pr in enumerate(procs):
            time.sleep(0.05)
            times[i].append(_remote_step(pr))
    _stop(procs)
    base = np.array(times[0])
    print(f"load average {os.getloadavg()}")
    for fl, t, pr in zip(variants, times, procs):
        t = np.array(t)
        print(
            f"{fl or '(none)'}: compile {float(pr.ready[0]):.1f} s, median "
            f"{np.median(t) * 1e3:.0f} ms, min {t.min() * 1e3:.0f} ms, "
            f"speed-up vs first: {np.median(base / t):.3f} (per-round), "
            f"{base.min() / t.min():.3f} (minima)"
        )


def serve(argv: list[str]) -> None:
    """A step server: build one step, print "ready", then time one step per stdin line and
    print "SECONDS LOSS".

        jdet VARIANT MODEL BATCH IMAGE   jdet's step (layer variant, XLA_FLAGS from the env)
        torch THREADS BATCH IMAGE        `benchmarks.torch_side.ultralytics_step`
    """
    kind, *rest = argv
    if kind == "jdet":
        import jax

        variant, model, batch, image = rest[0], rest[1], int(rest[2]), int(rest[3])
        case = _compiled(model, batch, image, variant)
        jax.block_until_ready(case.run())
        step, sync, loss = case.run, jax.block_until_ready, lambda m: float(m["loss"])
        ready = f"ready {case.compile_s:.2f}"
    elif kind == "torch":
        import torch

        from benchmarks.torch_side import ultralytics_step

        torch.set_num_threads(int(rest[0]))
        step = ultralytics_step(int(rest[1]), int(rest[2]), 4)
        step()
        sync, loss, ready = None, float, "ready"
    else:
        raise SystemExit(f"unknown step server {kind!r}")
    print(ready, flush=True)
    for _ in sys.stdin:
        timing = time_call(step, 1, warmup=False, sync=sync)
        print(f"{timing.times[0]} {loss(timing.last)}", flush=True)
