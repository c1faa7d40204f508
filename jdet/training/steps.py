"""TrainState, train_step and eval_step: pure functions, no jit decorators, no host I/O.

train_step is `loss_gradients` then `apply_gradients`; with `gradients_only` it returns the
gradient instead of applying it, which the trainer's gradient check uses. jit, shardings and
donation are applied once, by the trainer (docs/design.md §2). A step whose loss
or gradient is not finite changes nothing but the step counter and the skip counters:
`optax.apply_if_finite` holds the parameters and optimiser moments, and the BatchNorm
statistics and the Wise-IoU running mean are held here with the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jdet.losses import LossConfig, loss_terms, weighted_total
from jdet.losses.box import WIoUState


class TrainState(struct.PyTreeNode):
    """Everything a step reads and writes (checkpointed as a whole, minus the callables)."""

    step: jax.Array  # [] i32
    params: Any
    batch_stats: Any
    opt_state: Any
    wiou_state: WIoUState
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


def create_train_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, batch: Mapping
) -> TrainState:
    """Initialise the model on an example batch and the optimiser on its params."""
    variables = model.init({"params": rng, "dropout": rng}, batch, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        wiou_state=WIoUState.init(),
        apply_fn=model.apply,
        tx=tx,
    )


def forward_terms(apply_fn, params, batch_stats, wiou_state, batch, rng, loss_cfg, train: bool):
    """The model's forward pass and its unweighted loss terms → (terms, aux, batch_stats): the
    one place the train step, the evaluation step and the diagnostics compute them."""
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
        out, mutated = apply_fn(
            variables, batch, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        batch_stats = mutated["batch_stats"]
    else:
        out = apply_fn(variables, batch, train=False)
    terms, aux = loss_terms(out, batch, loss_cfg, wiou_state, train=train)
    return terms, aux, batch_stats


def loss_gradients(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    weights: Mapping[str, Any],
    *,
    loss_cfg: LossConfig = LossConfig(),
) -> tuple[Any, dict[str, Any]]:
    """The first half of `train_step`: the gradient of Σ weights[k]·terms[k] w.r.t. the params.

    `weights` may be floats (folded into the program) or device scalars (then one compiled
    program serves the training weights and the gradient check's one-hot weights).
    Returns (grads, out): out = {loss, terms, num_fg, batch_stats, wiou_state}, what
    `apply_gradients` needs besides the gradients.
    """
    rng = jax.random.fold_in(rng, state.step)  # stateless: exact on resume

    def loss_fn(params):
        terms, aux, batch_stats = forward_terms(
            state.apply_fn, params, state.batch_stats, state.wiou_state, batch, rng, loss_cfg, True
        )
        return weighted_total(terms, weights), (terms, aux, batch_stats)

    (loss, (terms, aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    out = dict(
        loss=loss,
        terms=terms,
        num_fg=aux["num_fg"],
        batch_stats=batch_stats,
        wiou_state=aux["wiou_state"],
    )
    return grads, out


def apply_gradients(
    state: TrainState, grads: Any, out: Mapping[str, Any]
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The second half of `train_step`: the optimiser update from `loss_gradients`' output,
    held back whole when the loss or a gradient is not finite. Returns (state, metrics)."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss = out["loss"]
    applied = opt_state.last_finite if hasattr(opt_state, "last_finite") else jnp.isfinite(loss)

    def keep_if_applied(new, old):
        return jax.tree.map(lambda n, o: jnp.where(applied, n, o), new, old)

    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        batch_stats=keep_if_applied(out["batch_stats"], state.batch_stats),
        wiou_state=keep_if_applied(out["wiou_state"], state.wiou_state),
    )
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "num_fg": out["num_fg"]}
    metrics.update({f"{k}_loss": v for k, v in out["terms"].items()})
    metrics["skipped"] = (~applied).astype(jnp.int32)
    if hasattr(opt_state, "total_notfinite"):
        metrics["total_skipped"] = opt_state.total_notfinite
    return new_state, metrics


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    loss_weights: Mapping[str, Any],
    loss_cfg: LossConfig = LossConfig(),
    gradients_only: Any = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step: `loss_gradients`, then `apply_gradients`.

    batch: query [B,H,W,3] f32; support [B,N,K,S,S,3] f32; support_mask [B,N] bool;
           boxes [B,M,4] f32 xyxy pixels; labels [B,M] i32 (way index); box_mask [B,M] bool.
    Returns the new state and metrics (device scalars): loss, <term>_loss, grad_norm, num_fg,
    skipped (1 if this step was not applied), total_skipped.

    The trainer compiles it with the loss weights as device scalars and `gradients_only` as a
    traced bool: when it is true, the returned state carries this step's gradient in place of
    its parameters (the rest as if applied). Its per-term gradient check calls the one
    compiled step with one-hot weights on a copy of the state
    (`jdet.grads.per_term_grads_by_weights`), so the check compiles nothing of its own. A
    false flag selects the new parameters: the step runs as fast as one compiled without it,
    to the same bits (docs/benchmarks.md §9).
    """
    grads, out = loss_gradients(state, batch, rng, loss_weights, loss_cfg=loss_cfg)
    new_state, metrics = apply_gradients(state, grads, out)
    if gradients_only is not False:
        params = jax.tree.map(
            lambda g, p: jnp.where(gradients_only, g, p), grads, new_state.params
        )
        new_state = new_state.replace(params=params)
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    loss_weights: Mapping[str, float],
    loss_cfg: LossConfig = LossConfig(),
) -> dict[str, jax.Array]:
    """Loss terms in eval mode (running BN statistics, frozen Wise-IoU mean)."""
    terms, aux, _ = forward_terms(
        state.apply_fn,
        state.params,
        state.batch_stats,
        state.wiou_state,
        batch,
        None,
        loss_cfg,
        False,
    )
    metrics = {f"{k}_loss": v for k, v in terms.items()}
    metrics["loss"] = weighted_total(terms, loss_weights)
    metrics["num_fg"] = aux["num_fg"]
    return metrics
