"""FLOPs from XLA's cost analysis: of any lowered/compiled stage, and of jdet's train steps.

The steps are built with XLA's convolutions (`conv="xla"`): XLA cannot count the FLOPs inside
oneDNN's custom calls (jdet's default on one CPU device); the math is the same. `python -m
benchmarks all` runs `measure_flops` in its own process; `profile flops|ab|vs` use the same
helpers.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import train
from benchmarks.steps import MODELS, build_train_step

COMPILED = "`jax.jit(step).lower(...).compile()`"
LOWERED = "`jax.jit(step).lower(...)` (before XLA's passes)"


def xla_cost(stage) -> dict[str, Any] | None:
    """cost_analysis() of a jax Lowered or Compiled as one dict, or None where XLA gives none."""
    try:
        analysis = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return analysis or None


def xla_flops(stage) -> float | None:
    """cost_analysis()['flops'] of a jax Lowered or Compiled, or None where XLA gives none."""
    flops = (xla_cost(stage) or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def step_flops(model: str, *, compile: bool = True, **sizes: Any) -> tuple[float | None, str]:
    """(FLOPs per train step of `model` at `sizes` (build_train_step's), source): XLA's count of
    the compiled step, or of the lowered one (compile=False, or where the compiled has none)."""
    lowered = build_train_step(model, conv="xla", **sizes).lower()
    if compile:
        flops = xla_flops(lowered.compile())
        if flops is not None:
            return flops, COMPILED
    return xla_flops(lowered), LOWERED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)
    parser.add_argument("--lowered", action="store_true", help="no XLA compile (--quick)")


def measure_flops(args) -> dict:
    """FLOPs per jdet train step of --rows (yolo, refdet) from XLA's cost analysis of the
    compiled step (of the lowered one with --lowered): {row: {"flops", "source"}}."""
    result = {}
    for row in (r for r in args.rows.split(",") if r in MODELS):
        flops, source = step_flops(
            row,
            compile=not args.lowered,
            batch=args.batch,
            image=args.image,
            boxes=args.boxes,
            episodes=args.episodes,
        )
        result[row] = {"flops": flops, "source": source}
    return result
