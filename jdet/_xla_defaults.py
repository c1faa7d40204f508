"""XLA:CPU defaults that jdet applies when it is imported (before JAX opens a backend).

Measured on the 2-core AMD EPYC (Zen 4) CI machine with jaxlib 0.10.2
(`python3 scripts/profile_step.py flags --flags ";--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"`):
XLA:CPU hands every convolution to YNNPACK by default, and YNNPACK ran YOLOv8n's 3×3
convolutions 1.2–1.5× slower than XLA's own (Eigen) convolution (8×40×40×64→64: forward
9.8 vs 7.7 ms, input gradient 9.4 vs 7.8, weight gradient 11.5 vs 7.6), so the whole YOLOv8n
train step runs 1.10–1.13× faster with convolutions taken out of YNNPACK's set (dots,
elementwise and reduction fusions stay with YNNPACK: turning all of YNNPACK off gained only
1.03–1.07×). The results differ from YNNPACK's only by float32 rounding.

Applied only when all hold: the environment variable ``JDET_XLA_DEFAULTS`` is not ``0``; the
user's ``XLA_FLAGS`` do not already set ``xla_cpu_experimental_ynn_fusion_type``; jaxlib is a
version where this was measured (0.10.x: the flag's syntax is experimental). The flag is
appended to ``XLA_FLAGS`` (never replacing the user's flags), which XLA reads when the first
backend starts — so import jdet before running anything on JAX (the jdet commands do). It
concerns XLA:CPU only; GPU backends ignore it.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_MEASURED_JAXLIB = ("0.10.",)


def cpu_flags_to_add(environ=None, jaxlib_version: str | None = None) -> list[str]:
    """The XLA flags jdet would append to ``XLA_FLAGS`` (empty when it leaves them alone)."""
    env = os.environ if environ is None else environ
    if env.get("JDET_XLA_DEFAULTS", "1").strip() == "0":
        return []
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
