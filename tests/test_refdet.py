"""The assembled RefDet: shapes, parameter budget, losses end to end, gradient paths, bf16."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.distributed import run_once
from jdet.losses import LossConfig, loss_terms
from jdet.models.refdet import RefDet, refdet_param_groups
from tests.helpers import STAGE2_WEIGHTS, refdet_batch

pytestmark = pytest.mark.heavy(3)


def _counts(params):
    return {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}


# The original's printed summary (docs/original.md §2), and jdet's exact counts:
#   support encoder 21.77M = timm DINOv3 ViT-S/16 21,586,944 + scale projections 185,760.
#     jdet: HF DINOv3ViTModel 21,596,544 (+ q/v biases 9,216 and the unused mask token 384,
#     both in the HF checkpoint) + projections 185,760.
#   YOLOv8n 3.16M = ultralytics' whole model incl. its unused Detect head (897,648 + 16);
#     jdet keeps backbone + neck: 2,259,536.
#   fusion 0.78M = 776,160 (equal).  dual head 4.51M = 4,515,105; jdet 4,515,073 (no frozen
#     16-weight DFL decoders).  triplet projection 99,072 (equal).
#   jdet adds the FSCE-style contrastive head: 246,784.
EXPECTED = dict(
    support_encoder=21_596_544,
    projections=185_760,
    triplet_projection=99_072,
    backbone=2_259_536,
    fusion=776_160,
    head=4_515_073,
    contrastive=246_784,
)


def test_full_size_shapes_and_parameter_budget():
    m = RefDet()
    batch = refdet_batch()
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), batch))
    counts = _counts(v["params"])
    print("\nRefDet parameters:", {k: f"{c / 1e6:.3f}M" for k, c in counts.items()})
    assert counts == EXPECTED
    total = sum(counts.values())
    assert total == 29_678_929 and total < 50_000_000
    for hw, anchors in [((320, 320), 8500), ((640, 640), 34000)]:
        b = refdet_batch(hw=hw)
        out = jax.eval_shape(lambda v: m.apply(v, b), v)
        assert out["dist"].shape == (2, anchors, 4, 17)
        assert out["cls"].shape == out["proto_cos"].shape == (2, anchors, 2)
        assert out["embed"].shape == (2, anchors, 128)
        assert out["base_cls"].shape == (2, anchors, 80)
        assert out["triplet_embed"].shape == (12, 256) and out["triplet_labels"].shape == (12,)
        assert out["anchors"].shape == (anchors, 2) and out["strides"].shape == (anchors, 1)
    groups = refdet_param_groups(v["params"], 6)
    sizes = collections.Counter()
    for g, leaf in zip(jax.tree.leaves(groups), jax.tree.leaves(v["params"])):
        sizes[g] += leaf.size
    # Patch embedding + first 6 blocks (+ CLS, registers, mask token): the original's 10.94M.
    assert sizes["frozen"] == 10_946_688
    assert sizes["heads"] == 4_515_073 + 185_760 + 99_072 + 246_784


def _tiny(**kw):
    return RefDet(yolo_scale="t2", encoder="dinov3-tiny", frozen_blocks=1, nc_base=3, **kw)


@pytest.fixture(scope="module")
def tiny():
    m = _tiny()
    batch = refdet_batch(hw=(64, 64), s=32)
    v = run_once(jax.jit(m.init), jax.random.PRNGKey(0), batch)  # as the trainer initialises
    return m, batch, v


def test_tiny_forward_losses_finite_and_triplet_reaches_trainable_blocks(tiny):
    """The forward pass, the loss values and the path of the triplet gradient. Every term's
    gradient on this model is checked finite by the trainer's --check (test_train.py
    test_check_flag_exits_zero runs it on configs/tiny.py), and the optimiser's frozen and
    moving groups by test_steps.py: here only what neither of them sees."""
    m, batch, v = tiny
    out = jax.jit(lambda v, b: m.apply(v, b))(v, batch)
    # Padded way of image 1: −1e9 logits, zero cosine.
    assert float(out["cls"][1, :, 1].max()) <= -1e8
    assert float(jnp.abs(out["proto_cos"][1, :, 1]).max()) == 0.0
    assert bool((jnp.abs(out["proto_cos"]) <= 1 + 1e-5).all())

    def terms_fn(params):
        o, _ = m.apply({**v, "params": params}, batch, train=True, mutable=["batch_stats"])
        return loss_terms(o, batch, LossConfig())[0]

    terms = jax.jit(terms_fn)(v["params"])
    assert set(terms) == set(STAGE2_WEIGHTS)
    assert all(bool(jnp.isfinite(t)) for t in terms.values()), terms
    # The triplet term reaches the support encoder's trainable blocks, never the frozen ones.
    grads = jax.jit(jax.grad(lambda p: terms_fn(p)["triplet"]))(v["params"])
    encoder = grads["support_encoder"]
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(encoder["layer_1"])) > 0
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(encoder["layer_0"]))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(grads))


@pytest.mark.deep  # an option of the original's behaviour: the deep profile
def test_untrained_projections_option_blocks_their_gradient(tiny):
    _, batch, v = tiny
    m = _tiny(train_projections=False)

    def supcon(params):
        o, _ = m.apply({**v, "params": params}, batch, train=True, mutable=["batch_stats"])
        return loss_terms(o, batch)[0]["supcon"]

    g = jax.jit(jax.grad(supcon))(v["params"])
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["projections"]))


@pytest.mark.deep  # bfloat16 (GPU) path: the deep profile
def test_bf16_compute_finite_and_close(tiny):
    m, batch, v = tiny
    ref = jax.jit(m.apply)(v, batch)
    got = jax.jit(_tiny(dtype=jnp.bfloat16).apply)(v, batch)
    for k in ("dist", "proto_cos", "embed"):
        assert got[k].dtype == jnp.float32 and bool(jnp.isfinite(got[k]).all())
        scale = float(jnp.abs(ref[k]).max())
        np.testing.assert_allclose(got[k], ref[k], atol=0.1 * scale, err_msg=k)
    terms, _ = loss_terms(got, batch)
    assert all(bool(jnp.isfinite(t)) for t in terms.values())


def test_shared_support_groups_match_per_query_encoding(tiny):
    m, batch, v = tiny
    # Two episodes of one query each would be trivial; make both queries share image 0's support.
    shared = dict(
        batch,
        support=jnp.repeat(batch["support"][:1], 2, 0),
        support_mask=jnp.repeat(batch["support_mask"][:1], 2, 0),
    )
    ref = jax.jit(m.apply)(v, shared)
    got = jax.jit(_tiny(support_groups=1).apply)(v, shared)
    for key in ("dist", "cls", "proto_cos", "embed"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert got["triplet_embed"].shape[0] == ref["triplet_embed"].shape[0] // 2
    np.testing.assert_allclose(
        got["triplet_embed"],
        ref["triplet_embed"][: got["triplet_embed"].shape[0]],
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="support_groups"):
        _tiny(support_groups=3).apply(v, shared)
