"""Box regression losses: 1 − CIoU and Wise-IoU v1/v2/v3 (per box, unreduced).

CIoU follows ultralytics/utils/loss.py `BboxLoss`; Wise-IoU follows Tong et al. 2023,
"Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing Mechanism", and the authors'
code (Instinct323/wiou, `iou.py`). docs/losses.md §4 has the formulas and the constants.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jdet.boxes import bbox_iou, center_distance_sq, enclosing_diag_sq

WIoUVariant = Literal["v1", "v2", "v3"]


def ciou_loss(pred: jax.Array, target: jax.Array, eps: float = 1e-7) -> jax.Array:
    """1 − CIoU per box pair: [..., 4] × [..., 4] xyxy → [...], in [0, 2)."""
    chex.assert_equal_shape([pred, target])
    return 1.0 - bbox_iou(pred, target, kind="ciou", eps=eps)


class WIoUState(NamedTuple):
    """Running mean of the IoU loss, threaded by the caller (saved in checkpoints).

    mean: [] f32, starts at 1.0 (the paper's m₀).
    """

    mean: jax.Array

    @classmethod
    def init(cls) -> "WIoUState":
        return cls(mean=jnp.ones((), jnp.float32))


def wiou_loss(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    state: WIoUState,
    *,
    variant: WIoUVariant = "v3",
    alpha: float = 1.9,
    delta: float = 3.0,
    momentum: float = 1e-2,
    train: bool = True,
    eps: float = 1e-7,
) -> tuple[jax.Array, WIoUState]:
    """Wise-IoU per box pair, and the updated running mean of the IoU loss.

    ``L_IoU = 1 − IoU``; ``R = exp(ρ² / sg(cw² + ch²))``; v1 = R·L_IoU. With
    ``β = sg(L_IoU) / m`` the focusing factor is ``sqrt(β)`` (v2, "monotonous") or
    ``β / (δ·α^(β−δ))`` (v3, non-monotonic). The running mean m is updated *before* β from the
    masked mean of sg(L_IoU) when ``train`` (the reference's order); frozen in eval. The whole
    focusing factor is stop-gradient, so sqrt(β) at β = 0 (a perfect box) is harmless.

    Args:
      pred: [..., 4] f32 xyxy; target: [..., 4] f32 xyxy.
      mask: [...] bool, which pairs are real (foreground) boxes; others give 0 and do not move m.
      state: WIoUState with the running mean.
      variant: "v1" | "v2" | "v3"; alpha, delta: v3 constants; momentum: μ of the mean.
      train: update the running mean.

    Returns:
      (loss [...] f32, zero where masked; new WIoUState).
    """
    chex.assert_equal_shape([pred, target])
    if variant not in ("v1", "v2", "v3"):
        raise ValueError(f"wiou_loss: variant must be v1|v2|v3, got {variant!r}")
    iou = bbox_iou(pred, target, kind="iou", eps=eps)
    l_iou = 1.0 - iou
    # Distance attention: the enclosing diagonal is detached (the paper's W*, H*), +eps so that
    # identical degenerate boxes do not divide by zero (the official code has no eps).
    diag = jax.lax.stop_gradient(enclosing_diag_sq(pred, target)) + eps
    r_wiou = jnp.exp(center_distance_sq(pred, target) / diag)
    loss = r_wiou * l_iou

    mean = state.mean
    if variant != "v1" and train:
        count = mask.sum()
        batch_mean = jnp.where(mask, jax.lax.stop_gradient(l_iou), 0.0).sum() / jnp.maximum(
            count, 1
        )
        # No foreground → no information: keep the mean as is.
        mean = jnp.where(count > 0, (1 - momentum) * mean + momentum * batch_mean, mean)
    mean = jax.lax.stop_gradient(mean)
    if variant != "v1":
        beta = jax.lax.stop_gradient(l_iou) / jnp.maximum(mean, eps)
        if variant == "v2":
            focus = jnp.sqrt(beta)
        else:
            focus = beta / (delta * jnp.power(alpha, beta - delta))
        loss = loss * jax.lax.stop_gradient(focus)
    return jnp.where(mask, loss, 0.0), WIoUState(mean=mean)
