"""train_step / eval_step on a tiny RefDet: progress, skipped non-finite steps, frozen groups."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.distributed import run_once
from jdet.models.refdet import RefDet, refdet_param_groups
from jdet.training.optim import OptimConfig, make_optimizer
from jdet.training.steps import create_train_state, eval_step, train_step
from tests.helpers import STAGE2_WEIGHTS, refdet_batch

pytestmark = pytest.mark.heavy(2)


@pytest.fixture(scope="module")
def setup():
    model = RefDet(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=0)
    batch = refdet_batch(hw=(64, 64), s=32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))["params"]
    groups = refdet_param_groups(params, 1)
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=10), params, groups)
    # Jitted for compile speed, as the trainer does (op by op it took twice as long).
    create = jax.jit(lambda b: create_train_state(model, tx, jax.random.PRNGKey(0), b))
    state = run_once(create, batch)
    # The step as the trainer compiles it: loss weights and `gradients_only` as arguments.
    jitted = jax.jit(
        lambda s, b, r, w, g: train_step(s, b, r, loss_weights=w, gradients_only=g)
    )
    weights = {k: np.float32(v) for k, v in STAGE2_WEIGHTS.items()}

    def step(state, batch, rng, weights=weights, gradients_only=np.bool_(False)):
        return jitted(state, batch, rng, weights, gradients_only)

    return state, batch, step, groups


def test_steps_update_and_skip_nonfinite(setup):
    state, batch, step, groups = setup
    s1, m1 = step(state, batch, jax.random.PRNGKey(1))
    assert int(s1.step) == 1 and int(m1["skipped"]) == 0
    assert all(bool(jnp.isfinite(v)) for v in m1.values())
    # The frozen blocks keep their parameters bit for bit; every other group moves.
    moved = collections.defaultdict(list)
    for a, b, g in zip(
        jax.tree.leaves(s1.params), jax.tree.leaves(state.params), jax.tree.leaves(groups)
    ):
        moved[g].append(not np.array_equal(a, b))
    assert not any(moved.pop("frozen"))
    assert set(moved) == {"support_encoder", "backbone", "fusion", "heads"}
    assert all(any(m) for m in moved.values()), {g: sum(m) for g, m in moved.items()}
    assert float(s1.wiou_state.mean) != 1.0

    bad = dict(batch, query=batch["query"].at[0, 0, 0, 0].set(jnp.nan))
    s2, m2 = step(s1, bad, jax.random.PRNGKey(1))
    assert int(s2.step) == 2 and int(m2["skipped"]) == 1 and int(m2["total_skipped"]) == 1
    for a, b in zip(
        jax.tree.leaves((s2.params, s2.batch_stats, s2.wiou_state)),
        jax.tree.leaves((s1.params, s1.batch_stats, s1.wiou_state)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    s3, m3 = step(s2, batch, jax.random.PRNGKey(1))
    assert int(m3["skipped"]) == 0 and int(m3["total_skipped"]) == 1


def test_gradients_only_returns_the_weighted_gradient(setup):
    """The trainer's gradient check: the same compiled step, one-hot weights, the gradient
    in place of the parameters. Gradients are linear in the weights, and carry grad_norm."""
    state, batch, step, _ = setup
    rng, only = jax.random.PRNGKey(1), np.bool_(True)

    def weights(**on):
        return {k: np.float32(on.get(k, 0.0)) for k in STAGE2_WEIGHTS}

    box, m_box = step(state, batch, rng, weights(box=1.0), only)
    cls, _ = step(state, batch, rng, weights(cls=1.0), only)
    both, _ = step(state, batch, rng, weights(box=1.0, cls=2.0), only)
    leaves = [jax.tree.leaves(x.params) for x in (box, cls, both)]
    # float32: some gradients are rounding noise (~1e-7, e.g. a bias before a BatchNorm), so
    # linearity holds for the whole gradient, relative to its norm.
    diff = np.sqrt(sum(float(np.sum((t - b - 2 * c) ** 2)) for b, c, t in zip(*leaves)))
    total = np.sqrt(sum(float(np.sum(t**2)) for t in leaves[2]))
    assert diff <= 1e-5 * total, (diff, total)
    norm = np.sqrt(sum(float(jnp.sum(g.astype(jnp.float32) ** 2)) for g in leaves[0]))
    np.testing.assert_allclose(norm, float(m_box["grad_norm"]), rtol=1e-5)
    assert norm > 0
    zero, _ = step(state, batch, rng, weights(), only)
    assert all(not np.any(g) for g in jax.tree.leaves(zero.params))


def test_eval_step_and_repeated_steps_reduce_loss(setup):
    state, batch, step, _ = setup
    ev = jax.jit(functools.partial(eval_step, loss_weights=STAGE2_WEIGHTS))
    before = float(ev(state, batch)["loss"])
    s = state
    for _ in range(6):
        s, _ = step(s, batch, jax.random.PRNGKey(2))
    after = float(ev(s, batch)["loss"])
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before
