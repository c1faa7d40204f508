import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.training.optim import OptimConfig, decay_mask, learning_rate_schedule, make_optimizer


def _params():
    return {
        "enc": {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}},
        "frozen": {"kernel": jnp.ones((2, 2))},
        "head": {
            "kernel": jnp.ones((4, 2)),
            "ln": {"scale": jnp.ones((2,))},
            "temperature": jnp.float32(10.0),
        },
    }


GROUPS = {
    "enc": {"dense": {"kernel": "support_encoder", "bias": "support_encoder"}},
    "frozen": {"kernel": "frozen"},
    "head": {"kernel": "heads", "ln": {"scale": "heads"}, "temperature": "heads"},
}


def test_schedule_warmup_cosine_to_final_fraction():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, total_steps=110, final_lr_fraction=0.01)
    sched = learning_rate_schedule(cfg)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(110)) == pytest.approx(1e-5)
    assert float(learning_rate_schedule(OptimConfig(lr=1e-3, total_steps=5))(0)) == pytest.approx(
        1e-3
    )


def test_decay_mask_skips_norms_biases_scalars():
    m = decay_mask(_params())
    assert m["enc"]["dense"]["kernel"] and not m["enc"]["dense"]["bias"]
    assert not m["head"]["ln"]["scale"] and not m["head"]["temperature"]


def test_groups_frozen_and_layerwise_lr():
    params = _params()
    cfg = OptimConfig(lr=0.1, weight_decay=0.0, clip_norm=None, total_steps=10)
    tx = make_optimizer(cfg, params, GROUPS)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    # Adam's first step moves every unit-gradient entry by lr × multiplier.
    np.testing.assert_allclose(updates["enc"]["dense"]["kernel"], -0.1 * 0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 2.0, rtol=1e-4)
    assert float(jnp.abs(updates["frozen"]["kernel"]).max()) == 0.0


def test_nonfinite_step_is_skipped_and_counted():
    params = _params()
    tx = make_optimizer(OptimConfig(total_steps=10), params, GROUPS)
    state = tx.init(params)
    bad = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    updates, state = tx.update(bad, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
    good = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(good, state, params)
    assert int(state.notfinite_count) == 0
    assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0


def test_unknown_group_and_bad_config_fail_clearly():
    with pytest.raises(ValueError, match="mystery"):
        make_optimizer(OptimConfig(), _params(), jax.tree.map(lambda _: "mystery", _params()))
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        OptimConfig(warmup_steps=20, total_steps=10)


def test_weight_decay_only_on_kernels():
    params = _params()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, clip_norm=None, total_steps=10)
    tx = make_optimizer(cfg, params, GROUPS)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0  # decayed
    assert float(jnp.abs(updates["head"]["ln"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["enc"]["dense"]["bias"]).max()) == 0.0
