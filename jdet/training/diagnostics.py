"""The training run's diagnostics, in one place:

- the per-term gradient check (`grad_check`, step 0 and every `debug.grad_check_every` steps),
  the expected loss at initialisation (`init_loss_check`) and the ``--check`` first-batch
  report (`check_first_batch`);
- NaN forensics: `dump_nan` (a non-finite step's batch and per-term report) and the
  ``debug.inject_nan_steps`` drill (`nan_injector`);
- in-jit value assertions (`checked`, `checked_per_term_grads`: chexified
  finiteness checks, about 2× slower on small ops, for debugging; the train step itself relies
  on `optax.apply_if_finite` and the host-side checks above);
- `CompileCounter`, the XLA compilations inside a block (the train step must compile once).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import numpy as np
from jax import monitoring

from jdet import distributed
from jdet.distributed import compile_synchronized
from jdet.grads import diagnose, format_grad_report, per_term_grads
from jdet.losses import LossConfig
from jdet.training.steps import forward_terms

_TERMS_FNS: dict[tuple[int, LossConfig], tuple[Any, Any]] = {}
_COMPILED: dict[Any, Any] = {}  # compile_remembered's programs, newest last
_COMPILED_KEEP = 4


def _type_key(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        return (leaf.shape, leaf.dtype, leaf.sharding)
    if isinstance(leaf, np.ndarray):
        return (leaf.shape, leaf.dtype)
    return leaf  # static arguments (functions, flags) stand for themselves


def compile_remembered(jitted: Any, *args: Any, **kwargs: Any) -> Any:
    """`compile_synchronized`, remembered per (program, argument types): the gradient check
    runs every `debug.grad_check_every` steps, and `jitted.lower(...).compile()` would trace
    and compile it again each time (minutes for the original's model), since it bypasses
    jit's own cache. Keeps the last few programs."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    key = (jitted, tree, tuple(_type_key(x) for x in leaves))
    if key not in _COMPILED:
        _COMPILED[key] = compile_synchronized(jitted, *args, **kwargs)
        while len(_COMPILED) > _COMPILED_KEEP:
            del _COMPILED[next(iter(_COMPILED))]
    return _COMPILED[key]


def make_terms_fn(apply_fn: Any, loss_cfg: LossConfig):
    """terms_fn(params, batch, rng, batch_stats, wiou_state) → unweighted loss terms, as
    `train_step` computes them.

    One function object per (apply_fn, loss_cfg): `grads.diagnose` jits with terms_fn as a
    static argument, so reusing it lets every later gradient check reuse the compilation;
    the state that changes between checks is passed as arguments, not closed over.
    """
    key = (id(apply_fn), loss_cfg)
    if key not in _TERMS_FNS:

        def terms_fn(params, batch, rng, batch_stats, wiou_state):
            args = (params, batch_stats, wiou_state, batch, rng, loss_cfg, True)
            return forward_terms(apply_fn, *args)[0]

        _TERMS_FNS[key] = (apply_fn, terms_fn)  # holding apply_fn keeps its id unique
    return _TERMS_FNS[key][1]


def diagnose_terms(
    state, batch, rng, loss_cfg: LossConfig, weighted_grads=None, term_names=None
) -> dict:
    """`grads.diagnose` of the train-step terms.

    With `weighted_grads` (the trainer's compiled train step with `gradients_only`, on this
    state and batch, as a function of the loss weights, whose names are `term_names`): method
    "weights", one call of it per term with one-hot weights, so the check compiles nothing
    beside the train step. Otherwise method
    "scan": one vjp whose pull-back runs once per term inside one program, so the check
    traces and compiles about like a train step (the per-term "separate" method traced 4×
    and compiled 2× longer on configs/tiny.py, and its cached executable took 35 s to load
    against 2 s). The one-vjp "vmap" method is not used: jax 0.10 cannot vmap the transpose
    of a grouped convolution (RefDet's depthwise convs) under a sharding. A NaN that leaks
    between terms in a shared backward pass is re-derived apart by `diagnose` (a second
    program, only then)."""
    terms_fn = make_terms_fn(state.apply_fn, loss_cfg)
    args = (batch, rng, state.batch_stats, state.wiou_state)
    method = "scan" if weighted_grads is None else "weights"
    report, _ = diagnose(
        terms_fn,
        state.params,
        *args,
        method=method,
        compile_fn=compile_remembered,
        weighted_grads=weighted_grads,
        term_names=term_names,
    )
    report["method"] = method
    return report


def grad_check(
    state,
    batch,
    rng,
    loss_cfg: LossConfig,
    workdir: pathlib.Path,
    step: int,
    *,
    write=True,
    weighted_grads=None,
    term_names=None,
) -> dict:
    """`grads.diagnose` on this batch (see `diagnose_terms`): prints the table, writes
    workdir/grad_report.json and appends the report to workdir/grad_checks.jsonl (for the
    plots). Returns the report.

    Every process of a multi-process run computes it (it is one sharded computation); only
    the one with write=True (process 0) prints and writes."""
    report = diagnose_terms(state, batch, rng, loss_cfg, weighted_grads, term_names)
    report["step"] = int(step)
    if not write:
        return report
    print(f"per-term gradient check at step {step}:\n{format_grad_report(report)}", flush=True)
    (workdir / "grad_report.json").write_text(json.dumps(report, indent=2) + "\n")
    with (workdir / "grad_checks.jsonl").open("a") as f:
        f.write(json.dumps(report) + "\n")
    return report


def init_statistics(state, batch, rng, loss_cfg: LossConfig) -> dict[str, float]:
    """Host floats of the first batch: the terms, ``target_score_sum`` and ``num_fg`` of the
    assignment, and ``ways`` (mean number of real support ways per query)."""

    def stats(params, batch, rng):
        args = (params, state.batch_stats, state.wiou_state, batch, rng, loss_cfg, True)
        terms, aux, _ = forward_terms(state.apply_fn, *args)
        return dict(
            terms=terms,
            target_score_sum=aux["target_score_sum"],
            num_fg=aux["num_fg"],
            ways=batch["support_mask"].sum(-1).astype(np.float32).mean(),
        )

    host = jax.device_get(jax.jit(stats)(state.params, batch, rng))
    return dict(
        terms={k: float(v) for k, v in host["terms"].items()},
        **{k: float(host[k]) for k in ("target_score_sum", "num_fg", "ways")},
    )


def expected_init_losses(loss_cfg: LossConfig, stats: Mapping[str, Any]) -> dict[str, float]:
    """What the terms give at uniform logits on this batch's assignment.

    DFL: a uniform distribution has cross-entropy ln R against any (interpolated) target, so
    the term is 4·ln R (sides summed; ln R averaged) times Σ scores / max(Σ scores, 1) — the
    task-aligned scores that weight and normalise it (near 0 at init when no anchor aligns
    well). Prototype contrastive: ln(number of real ways) (cross-entropy over the prototypes).
    """
    per_anchor = math.log(loss_cfg.num_bins) * (4 if loss_cfg.dfl_reduction == "sum" else 1)
    score_sum = stats["target_score_sum"]
    expected = {"dfl": per_anchor * score_sum / max(score_sum, 1.0)}
    if loss_cfg.supcon_mode == "prototype" and stats["ways"] > 1 and stats["num_fg"] > 0:
        expected["supcon"] = math.log(stats["ways"])
    return expected


def init_loss_check(
    terms: Mapping[str, float], expected: Mapping[str, float], tolerance: float = 0.05
) -> tuple[list[str], list[str]]:
    """(warnings, errors): a term more than `tolerance` off its expected value is a warning,
    more than 2× off (clearly broken) or not finite is an error."""
    warnings, errors = [], []
    for name, value in terms.items():
        if not math.isfinite(value):
            errors.append(f"{name} = {value} is not finite")
    for name, want in expected.items():
        if name not in terms or not math.isfinite(terms[name]) or want <= 1e-6:
            continue
        got = terms[name]
        off = abs(got - want) / want
        line = f"{name} = {got:.4g}, expected ≈ {want:.4g} at init ({off:.0%} off)"
        if got > 2 * want or got < want / 2:
            errors.append(line)
        elif off > tolerance:
            warnings.append(line)
    return warnings, errors


def dump_nan(
    workdir: pathlib.Path,
    step: int,
    host_batch: Mapping[str, np.ndarray],
    batch: Mapping[str, Any],
    state,
    rng,
    loss_cfg: LossConfig,
) -> pathlib.Path:
    """Write the batch (npz) and the per-term culprit report to workdir/nan_dump/step_<n>.

    The report re-derives the terms on `batch`, the step's own sharded device batch, so it
    sees the values the step saw. host_batch is this process's share of it: batch.npz, or
    batch_process<i>.npz from each process of a multi-process run (the report from process 0).
    """
    out = workdir / "nan_dump" / f"step_{step:08d}"
    out.mkdir(parents=True, exist_ok=True)
    name = "batch.npz" if jax.process_count() == 1 else f"batch_process{jax.process_index()}.npz"
    np.savez_compressed(out / name, **{k: np.asarray(v) for k, v in host_batch.items()})
    report = diagnose_terms(state, batch, rng, loss_cfg)
    culprits = [
        n for n, t in report["terms"].items() if not (t["value_finite"] and t["grad_finite"])
    ]
    report.update(step=int(step), culprits=culprits)
    if jax.process_index() != 0:
        return out
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"step {step}: non-finite loss or gradient (culprit terms: {culprits or 'none found'}); "
        f"batch and report written to {out}",
        flush=True,
    )
    return out


@dataclasses.dataclass
class CheckReport:
    """What ``--check`` found on the first batch."""

    ok: bool  # every term and gradient finite, no term far from its expected value at init
    warnings: list[str]
    errors: list[str]
    report: dict[str, Any]  # the per-term gradient report (grad_report.json)
    expected: dict[str, float]  # each term's expected value at uniform logits
    init: dict[str, Any]  # the first batch's statistics (terms, foreground anchors, ...)


def check_first_batch(config, state, host, batch, root_rng, lcfg, workdir) -> CheckReport:
    """--check: expected loss at init, per-term gradient table, grad_report.json."""
    rng = jax.random.fold_in(root_rng, state.step)
    stats = init_statistics(state, batch, rng, lcfg)
    expected = expected_init_losses(lcfg, stats)
    main = distributed.is_main()
    if main:
        print(
            f"first batch: {stats['num_fg']:.0f} foreground anchors, task-aligned score sum "
            f"{stats['target_score_sum']:.4g}; expected at uniform logits: "
            + ", ".join(f"{k} ≈ {v:.4g}" for k, v in expected.items()),
            flush=True,
        )
    report = grad_check(state, batch, rng, lcfg, workdir, int(state.step), write=main)
    warnings, errors = init_loss_check(stats["terms"], expected)
    for line in warnings if main else ():
        print(f"warning: {line}", flush=True)
    for line in errors if main else ():
        print(f"error: {line}", flush=True)
    return CheckReport(
        ok=bool(report["all_finite"] and not errors),
        warnings=warnings,
        errors=errors,
        report=report,
        expected=expected,
        init=stats,
    )


def nan_injector(steps: str):
    """debug.inject_nan_steps: a NaN query image at those 0-based steps (forensics drill)."""
    chosen = {int(s) for s in steps.split(",")} if steps else set()
    if not chosen:
        return None

    def inject(step: int, host: dict) -> dict:
        if step in chosen:
            host = dict(host, query=np.full_like(host["query"], np.nan))
        return host

    return inject


class CompileCounter:
    """Context manager counting XLA backend compilations (jax.monitoring) inside it; the
    count adds up over every `with` block. Its jax.monitoring listener exists only inside a
    block (nothing stays registered after a run)."""

    def __init__(self):
        self.count = 0

    def _on_event(self, event: str, duration: float, **_: Any) -> None:
        if event.endswith("backend_compile_duration"):
            self.count += 1

    def __enter__(self) -> None:
        monitoring.register_event_duration_secs_listener(self._on_event)

    def __exit__(self, *exc: object) -> None:
        monitoring.unregister_event_duration_listener(self._on_event)


# ------------------------------------------------------------------- in-jit value checks


def checked(fn: Callable, *, check_inputs: bool = True, **jit_kwargs) -> Callable:
    """jit(fn) with chexified finiteness checks on the floating inputs and on the outputs."""

    def body(*args, **kwargs):
        if check_inputs:
            floats = [x for x in jax.tree.leaves((args, kwargs)) if _is_float(x)]
            chex.assert_tree_all_finite(floats, custom_message=f"non-finite input to {fn.__name__}")
        out = fn(*args, **kwargs)
        floats = [x for x in jax.tree.leaves(out) if _is_float(x)]
        chex.assert_tree_all_finite(floats, custom_message=f"non-finite output of {fn.__name__}")
        return out

    body.__name__ = f"checked_{fn.__name__}"
    return chex.chexify(jax.jit(body, **jit_kwargs), async_check=False)


def _is_float(x) -> bool:
    return hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)


def checked_per_term_grads(terms_fn: Callable, **jit_kwargs) -> Callable:
    """`per_term_grads(terms_fn, params, *args)` under jit, asserting every term and every
    per-term gradient is finite (the seed's batch-0 check, as an exception)."""

    def grads_of(params, *args):
        return per_term_grads(terms_fn, params, *args)

    grads_of.__name__ = f"per_term_grads_{getattr(terms_fn, '__name__', 'terms')}"
    return checked(grads_of, check_inputs=True, **jit_kwargs)
