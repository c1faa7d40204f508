"""loss_terms end to end: init values, masks, jit == eager, bf16, the debug (chexified) variant."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.losses import LossConfig, loss_terms, weighted_total
from jdet.losses.box import WIoUState
from jdet.training.diagnostics import checked
from tests.helpers import (
    STAGE2_WEIGHTS,
    all_finite,
    head_outputs,
    simple_batch,
    value_and_grad_outputs,
)


def test_terms_present_and_finite():
    out = head_outputs(jax.random.PRNGKey(0))
    terms, aux = jax.jit(loss_terms)(out, simple_batch())
    assert set(terms) == {"box", "cls", "dfl", "supcon", "cpe", "triplet"}
    assert all_finite(terms) and int(aux["num_fg"]) > 0
    terms, _ = loss_terms(
        {k: out[k] for k in ("dist", "cls", "anchors", "strides")}, simple_batch()
    )
    assert set(terms) == {"box", "cls", "dfl"}


def test_init_values_uniform_head():
    """Uniform DFL logits: the original's reduction gives 4·ln 17 per box, ultralytics' ln 16."""
    out = head_outputs(jax.random.PRNGKey(0))
    out["dist"] = jnp.zeros_like(out["dist"])
    out["cls"] = jnp.zeros_like(out["cls"])
    batch = simple_batch()
    terms, aux = loss_terms(out, batch)
    ratio = float(aux["target_score_sum"]) / max(float(aux["target_score_sum"]), 1.0)
    assert float(terms["dfl"]) == pytest.approx(4 * math.log(17) * ratio, rel=1e-4)
    out16 = dict(out, dist=jnp.zeros(out["dist"].shape[:-1] + (16,)))
    terms16, aux16 = loss_terms(out16, batch, LossConfig.ultralytics())
    s = float(aux16["target_score_sum"])
    assert float(terms16["dfl"]) == pytest.approx(math.log(16) * s / max(s, 1.0), rel=1e-4)
    # BCE at zero logits: ln 2 per element over B·A·C elements, divided by S.
    n_el = out["cls"].size
    assert float(terms16["cls"]) == pytest.approx(n_el * math.log(2) / max(s, 1.0), rel=1e-4)


def test_no_gt_batch_is_finite_with_zero_box_and_dfl():
    out = head_outputs(jax.random.PRNGKey(1))
    batch = simple_batch()
    batch["box_mask"] = jnp.zeros_like(batch["box_mask"])
    fn = lambda o: weighted_total(loss_terms(o, batch)[0], STAGE2_WEIGHTS)  # noqa: E731
    val, g = value_and_grad_outputs(fn, out)
    terms, aux = loss_terms(out, batch)
    assert int(aux["num_fg"]) == 0
    assert float(terms["box"]) == 0.0 and float(terms["dfl"]) == 0.0
    assert float(terms["supcon"]) == 0.0 and float(terms["cpe"]) == 0.0
    assert bool(jnp.isfinite(val)) and all_finite(g)


def test_padded_boxes_and_ways_have_no_effect():
    out = head_outputs(jax.random.PRNGKey(2))
    batch = simple_batch()
    batch["support_mask"] = jnp.array([[True, True, True], [True, True, False]])
    ref, _ = loss_terms(out, batch)
    junk = dict(batch)
    junk["boxes"] = jnp.where(batch["box_mask"][..., None], batch["boxes"], 33.0)
    junk["labels"] = jnp.where(batch["box_mask"], batch["labels"], 2)
    out_junk = dict(out)
    out_junk["cls"] = out["cls"].at[1, :, 2].set(50.0)  # padded way of image 1
    out_junk["prototypes"] = out["prototypes"].at[1, 2].set(9.0)
    got, _ = loss_terms(out_junk, junk)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, err_msg=k)
    _, g = value_and_grad_outputs(
        lambda o: weighted_total(loss_terms(o, batch)[0], STAGE2_WEIGHTS), out
    )
    assert float(jnp.abs(g["cls"][1, :, 2]).max()) == 0.0
    assert float(jnp.abs(g["prototypes"][1, 2]).max()) == 0.0


def test_jit_equals_eager_and_wiou_state_threads():
    out = head_outputs(jax.random.PRNGKey(3))
    batch = simple_batch()
    st = WIoUState(mean=jnp.float32(0.8))
    t_eager, a_eager = loss_terms(out, batch, LossConfig(), st)
    t_jit, a_jit = jax.jit(loss_terms, static_argnames=("cfg", "train"))(
        out, batch, LossConfig(), st
    )
    for k in t_eager:
        np.testing.assert_allclose(t_jit[k], t_eager[k], rtol=1e-5, err_msg=k)
    assert float(a_jit["wiou_state"].mean) != 0.8
    _, a_eval = loss_terms(out, batch, LossConfig(), st, train=False)
    assert float(a_eval["wiou_state"].mean) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig.ultralytics(num_bins=17),
        LossConfig(assigner="center", wiou_variant="v3", cpe_variant="full", supcon_mode="supcon"),
        LossConfig(cpe_variant="fsce", cpe_reweight="linear", wiou_variant="v1"),
    ],
)
def test_configs_give_finite_grads(cfg):
    out = head_outputs(jax.random.PRNGKey(4), scale=30.0)
    _, g = value_and_grad_outputs(
        lambda o: weighted_total(loss_terms(o, simple_batch(), cfg)[0], STAGE2_WEIGHTS), out
    )
    assert all_finite(g)


def test_bf16_inputs_match_f32():
    out = head_outputs(jax.random.PRNGKey(5))
    out16 = {
        k: (
            v.astype(jnp.bfloat16)
            if v.dtype == jnp.float32 and k not in ("anchors", "strides")
            else v
        )
        for k, v in out.items()
    }
    out32 = {k: v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v for k, v in out16.items()}
    t16, _ = loss_terms(out16, simple_batch())
    t32, _ = loss_terms(out32, simple_batch())
    for k in t32:
        assert t16[k].dtype == jnp.float32
        np.testing.assert_allclose(t16[k], t32[k], rtol=1e-5, err_msg=k)


def test_weighted_total_requires_every_weight():
    terms = {"box": jnp.float32(1.0), "cls": jnp.float32(2.0)}
    assert float(weighted_total(terms, dict(box=2.0, cls=0.5))) == 3.0
    with pytest.raises(ValueError, match="cls"):
        weighted_total(terms, dict(box=1.0))


def test_loss_config_validation():
    with pytest.raises(ValueError, match="box_loss"):
        LossConfig(box_loss="giou")
    with pytest.raises(ValueError, match="num_bins"):
        LossConfig(num_bins=1)


def test_checked_variant_passes_and_catches_nan():
    checked_loss_terms = checked(loss_terms, static_argnames=("cfg", "train"))
    out = head_outputs(jax.random.PRNGKey(6))
    terms, _ = checked_loss_terms(out, simple_batch())
    assert all_finite(terms)
    bad = dict(out, dist=out["dist"].at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(Exception, match="non-finite input to loss_terms"):
        checked_loss_terms(bad, simple_batch())
    # A loss that makes a NaN itself is caught on its output.
    nan_loss = checked(lambda x: jnp.log(x - 2.0), check_inputs=True)
    with pytest.raises(Exception, match="non-finite output"):
        nan_loss(jnp.float32(1.0))
