"""Optimiser: AdamW with layer-wise learning rates, warmup + cosine, clipping, frozen groups.

Follows the original's recipe (docs/original.md §4): AdamW (β 0.9/0.999, eps 1e-8), weight decay
0.05, learning-rate multipliers per parameter group (support encoder 0.1×, backbone 1×,
fusion 2×, heads 2×), cosine annealing to `final_lr_fraction` × lr, global-norm clipping.
jdet adds: an optional linear warmup, no weight decay on norms, biases and scalars (the usual
practice the original skipped), frozen groups that never move (`optax.set_to_zero`), and
`optax.apply_if_finite` so a non-finite step is skipped and counted instead of poisoning the
weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax

FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings (mirrors `config.optim`)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1000
    final_lr_fraction: float = 0.01
    clip_norm: float = 5.0
    group_lr: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {
            "support_encoder": 0.1,
            "backbone": 1.0,
            "fusion": 2.0,
            "heads": 2.0,
        }
    )
    max_consecutive_nonfinite: int = 10

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.total_steps < 1:
            raise ValueError(f"optim.total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"optim.warmup_steps must be in [0, total_steps), got {self.warmup_steps}"
            )
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"optim.clip_norm must be > 0 or None, got {self.clip_norm}")


def learning_rate_schedule(cfg: OptimConfig, scale: float = 1.0) -> optax.Schedule:
    """Linear warmup from 0 (if any) then cosine from scale·lr to scale·lr·final_lr_fraction."""
    peak = cfg.lr * scale
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else peak,
        peak_value=peak,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps,
        end_value=peak * cfg.final_lr_fraction,
    )


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: kernels and embeddings (ndim ≥ 2), not norms, biases or
    scalars."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(
    cfg: OptimConfig, params: Any, groups: Any | None = None
) -> optax.GradientTransformation:
    """The full transformation for `params`.

    Args:
      cfg: OptimConfig.
      params: the parameter pytree (used for the weight-decay mask).
      groups: a pytree like params of group names (e.g. `jdet.models.refdet.refdet_param_groups`);
        "frozen" never moves; other names scale the learning rate by `cfg.group_lr[name]`.
        None: one group at 1×.

    Returns:
      clip → per-group AdamW, wrapped in `optax.apply_if_finite` (its state counts skipped
      steps: `notfinite_count`, `total_notfinite`).
    """
    if groups is None:
        groups = jax.tree.map(lambda _: "all", params)
        group_lr = {"all": 1.0}
    else:
        group_lr = dict(cfg.group_lr)
    names = set(jax.tree.leaves(groups))
    unknown = sorted(n for n in names if n != FROZEN and n not in group_lr)
    if unknown:
        raise ValueError(
            f"parameter group(s) {unknown} have no learning-rate multiplier in optim.group_lr "
            f"(known: {sorted(group_lr)})"
        )
    mask = decay_mask(params)
    transforms = {FROZEN: optax.set_to_zero()}
    for name in sorted(names - {FROZEN}):  # a set's order varies per process: keep the
        # program (and so its persistent-compile-cache key) identical across processes
        transforms[name] = optax.adamw(
            learning_rate_schedule(cfg, group_lr[name]),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=mask,
        )
    chain = optax.multi_transform(transforms, groups)
    if cfg.clip_norm is not None:
        chain = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), chain)
    return optax.apply_if_finite(chain, max_consecutive_errors=cfg.max_consecutive_nonfinite)
