"""An opt-in XLA:CPU setting for convolution-bound models: ``JDET_XLA_CPU_CONV=eigen``.

XLA:CPU (jaxlib 0.10) hands every convolution to YNNPACK by default. Measured on the 2-core
AMD EPYC (Zen 4) CI machine, interleaved A/B of whole train steps
(`python -m benchmarks profile flags --flags ";JDET_XLA_CPU_CONV=eigen" [--model refdet]`):

- YOLOv8n alone (batch 8, 320², detection loss, AdamW): XLA's own (Eigen) convolutions are
  1.10–1.13× faster (8×40×40×64→64 3×3: forward 9.8 → 7.7 ms, input gradient 9.4 → 7.8,
  weight gradient 11.5 → 7.6 ms);
- the RefDet step (YOLOv8n + DINOv3 ViT-S/16, 320²): 1.09–1.11× *slower*; the quickstart's
  small RefDet (128²): ~1.1× slower.

So it is not the default. With ``JDET_XLA_CPU_CONV=eigen`` in the environment, ``import jdet``
appends ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to ``XLA_FLAGS``
(dots, elementwise and reduction fusions stay with YNNPACK) — unless the user's ``XLA_FLAGS``
already set that flag, or jaxlib is not 0.10.x (the flag's syntax is experimental). XLA reads
``XLA_FLAGS`` when the first backend starts, so jdet must be imported before anything runs on
JAX (the jdet commands do). Results differ from YNNPACK's only by float32 rounding. XLA:CPU
only; GPU backends ignore it.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
ENV = "JDET_XLA_CPU_CONV"
_MEASURED_JAXLIB = ("0.10.",)


def cpu_flags_to_add(environ=None, jaxlib_version: str | None = None) -> list[str]:
    """The XLA flags jdet would append to ``XLA_FLAGS`` (empty when it leaves them alone)."""
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "").strip().lower()
    if choice in ("", "xla", "ynnpack", "default"):
        return []
    if choice != "eigen":
        raise ValueError(f"{ENV} must be 'eigen' or unset (XLA's default), got {env[ENV]!r}")
    if "xla_cpu_experimental_ynn_fusion_type" in env.get("XLA_FLAGS", ""):
        return []
    if jaxlib_version is None:
        try:
            from jaxlib import version as _v
        except ImportError:  # pragma: no cover - jaxlib is a dependency
            return []
        jaxlib_version = _v.__version__
    if not jaxlib_version.startswith(_MEASURED_JAXLIB):
        return []
    return [YNN_FLAG]


def apply(environ=None) -> list[str]:
    """Append `cpu_flags_to_add()` to ``XLA_FLAGS``; returns what was added."""
    env = os.environ if environ is None else environ
    add = cpu_flags_to_add(env)
    if add:
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", "").strip(), *add]).strip()
    return add
