"""The training loop's diagnostics: the ``--check`` first-batch report, the
``debug.inject_nan_steps`` NaN injector and the XLA compilation counter (used by
`jdet.trainer`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jdet import checks, distributed


def check_first_batch(config, state, host, batch, root_rng, lcfg, workdir) -> dict:
    """--check: expected loss at init, per-term gradient table, grad_report.json."""
    rng = jax.random.fold_in(root_rng, state.step)
    stats = checks.init_statistics(state, batch, rng, lcfg)
    expected = checks.expected_init_losses(lcfg, stats)
    main = distributed.is_main()
    if main:
        print(
            f"first batch: {stats['num_fg']:.0f} foreground anchors, task-aligned score sum "
            f"{stats['target_score_sum']:.4g}; expected at uniform logits: "
            + ", ".join(f"{k} ≈ {v:.4g}" for k, v in expected.items()),
            flush=True,
        )
    report = checks.grad_check(state, batch, rng, lcfg, workdir, int(state.step), write=main)
    warnings, errors = checks.init_loss_check(stats["terms"], expected)
    for line in warnings if main else ():
        print(f"warning: {line}", flush=True)
    for line in errors if main else ():
        print(f"error: {line}", flush=True)
    ok = report["all_finite"] and not errors
    return {
        "ok": ok,
        "warnings": warnings,
        "errors": errors,
        "report": report,
        "expected": expected,
        "init": stats,
    }


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
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_event)

    def __exit__(self, *exc: object) -> None:
        from jax import monitoring

        monitoring.unregister_event_duration_listener(self._on_event)
