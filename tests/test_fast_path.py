"""The fast layer implementations (jdet.models.fast_layers: fused BatchNorm + SiLU with a
hand-written gradient, separable max-pool, stride-2 3×3 convolution with a matmul input
gradient) against the plain Flax ones (`LayerImpl(fast=False)`), in float32: values, batch
statistics and gradients agree to ~1e-5 relative, and the variables are the same."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.models import fast_layers, layers
from jdet.models.fast_layers import bn_act_train
from jdet.models.impl import LayerImpl
from jdet.models.layers import max_pool_same
from jdet.models.yolo import YOLOv8
from tests.helpers import close, rel_err, tree_close

pytestmark = pytest.mark.heavy(2)

PLAIN = LayerImpl(fast=False)  # Flax's own modules


def test_layer_impl_validates_and_names_its_parts():
    assert LayerImpl().uses("bn_act") and not PLAIN.uses("bn_act")
    assert not LayerImpl(fast_off=("maxpool",)).uses("maxpool")
    assert LayerImpl(fast_off=("maxpool",)).uses("s2grad")
    assert PLAIN.backend() == "xla" and LayerImpl(conv="xla").describe() == "XLA"
    with pytest.raises(ValueError, match="fast_off"):
        LayerImpl(fast_off=("nope",))
    with pytest.raises(ValueError, match="conv backend"):
        LayerImpl(conv="mkl")


@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_bn_act_train_matches_flax_batchnorm_silu(act, eps):
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x = 3.0 * jax.random.normal(k[0], (4, 6, 5, 8)) + 1.5
    scale = 1.0 + 0.3 * jax.random.normal(k[1], (8,))
    bias = 0.5 * jax.random.normal(k[2], (8,))
    ct = jax.random.normal(k[3], x.shape)
    bn = nn.BatchNorm(use_running_average=False, epsilon=eps)

    def plain(x, scale, bias):
        y, upd = bn.apply(
            {
                "params": {"scale": scale, "bias": bias},
                "batch_stats": {"mean": jnp.zeros(8), "var": jnp.ones(8)},
            },
            x,
            mutable=["batch_stats"],
        )
        y = nn.silu(y) if act else y
        return y, upd["batch_stats"]

    def fast(x, scale, bias):
        y, mean, var = bn_act_train(x, scale, bias, eps, act)
        m = bn.momentum
        return y, {"mean": (1 - m) * mean, "var": m + (1 - m) * var}

    (y0, s0), (y1, s1) = plain(x, scale, bias), fast(x, scale, bias)
    close(y1, y0, what="y")
    tree_close(s1, s0, what="running stats")
    g0 = jax.grad(lambda *a: jnp.vdot(plain(*a)[0], ct), argnums=(0, 1, 2))(x, scale, bias)
    g1 = jax.grad(lambda *a: jnp.vdot(fast(*a)[0], ct), argnums=(0, 1, 2))(x, scale, bias)
    for name, a, e in zip(("x", "scale", "bias"), g1, g0):
        close(a, e, what=f"grad {name}")


def test_max_pool_same_matches_flax_max_pool():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 9, 5))
    ct = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def f(x, impl=LayerImpl()):
        return max_pool_same(x, 5, impl)

    y0 = f(x, PLAIN)
    g0 = jax.grad(lambda x: jnp.vdot(f(x, PLAIN), ct))(x)
    ref = nn.max_pool(x, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
    np.testing.assert_array_equal(y0, ref)
    y1 = f(x)
    g1 = jax.grad(lambda x: jnp.vdot(f(x), ct))(x)
    np.testing.assert_array_equal(y1, y0)  # max is exact
    close(g1, g0, what="max-pool grad")


@pytest.mark.parametrize("shape", [(2, 8, 6, 3, 5), (1, 4, 4, 16, 8), (2, 2, 10, 4, 4)])
def test_strided_conv_gradients_match_lax(shape):
    """conv3x3_s2's phase-by-phase input gradient equals the transposed strided convolution."""
    b, h, w, ci, co = shape
    x = jax.random.normal(jax.random.key(0), (b, h, w, ci))
    k = jax.random.normal(jax.random.key(1), (3, 3, ci, co))
    dy = jax.random.normal(jax.random.key(2), (b, h // 2, w // 2, co))
    out, vjp = jax.vjp(fast_layers.conv3x3_s2, x, k)
    ref_out, ref_vjp = jax.vjp(fast_layers._conv_s2, x, k)
    close(out, ref_out, what="value")
    for got, want, name in zip(vjp(dy), ref_vjp(dy), ("dx", "dw")):
        close(got, want, what=name)
    # Odd sizes keep nn.Conv (the phases assume an even input); the variables are the same.
    module = layers.ConvBNAct(co, kernel=3, stride=2)
    for size in (h, h + 1):
        xs = jnp.ones((1, size, size, ci))
        variables = module.init(jax.random.key(3), xs)
        assert variables["params"]["conv"]["kernel"].shape == (3, 3, ci, co)
        plain = module.clone(impl=PLAIN).init(jax.random.key(3), xs)
        tree_close(variables, plain, what=f"init at {size}")


@pytest.mark.parametrize(
    "b, h, w, c, mult, k, stride",
    [(2, 9, 7, 3, 1, 3, 1), (1, 8, 8, 4, 1, 7, 1), (2, 8, 6, 2, 2, 3, 2), (1, 7, 9, 3, 2, 3, 2)],
)
def test_depthwise_conv_matches_grouped_lax_conv(b, h, w, c, mult, k, stride):
    """depthwise_conv (shifted slices) = XLA's feature_group_count convolution: values and
    both gradients, odd sizes and a channel multiplier included."""
    x = jax.random.normal(jax.random.key(0), (b, h, w, c))
    kernel = jax.random.normal(jax.random.key(1), (k, k, 1, c * mult))
    p = k // 2

    def ref(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
        )

    got, vjp = jax.vjp(lambda x, w: fast_layers.depthwise_conv(x, w, stride), x, kernel)
    want, ref_vjp = jax.vjp(ref, x, kernel)
    close(got, want, what="value")
    dy = jax.random.normal(jax.random.key(2), want.shape)
    for g, r, name in zip(vjp(dy), ref_vjp(dy), ("dx", "dw")):
        close(g, r, what=name)
    # The module: nn.Conv's variables (same names, shapes, initial values) and outputs.
    fast = fast_layers.DepthwiseConv(c * mult, k, stride, groups=c)
    plain = nn.Conv(c * mult, (k, k), (stride, stride), ((p, p), (p, p)), feature_group_count=c)
    variables = fast.init(jax.random.key(3), x)
    tree_close(variables, plain.init(jax.random.key(3), x), what="init")
    close(fast.apply(variables, x), plain.apply(variables, x), what="module")
    with pytest.raises(ValueError, match="one input channel per group"):
        fast_layers.DepthwiseConv(c, k, groups=c + 1).init(jax.random.key(0), x)


@pytest.mark.deep  # 2 min; each fast op is checked above against Flax's
def test_yolo_fast_matches_plain():
    """Tiny YOLOv8: same variables; train/eval outputs and batch statistics agree to 1e-5; the
    parameter gradients of a random linear loss are as close to a float64 reference as the plain
    float32 path's are (through ~60 layers float32 rounding alone reaches ~1e-4 here)."""
    model = YOLOv8("t", num_classes=3)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (2, 64, 64, 3)))
    plain = model.clone(impl=PLAIN)
    v0 = jax.tree.map(np.asarray, plain.init(jax.random.PRNGKey(0), images))
    v1 = model.init(jax.random.PRNGKey(0), images)
    tree_close(v1, v0, rtol=0, what="init")  # same names, shapes, initial values
    heads = plain.apply(v0, images)
    cts = [
        np.asarray(jax.random.normal(jax.random.PRNGKey(10 + i), o.shape))
        for i, o in enumerate(heads)
    ]

    def run(impl, train, x64=False):
        dt = jnp.float64 if x64 else jnp.float32
        # the reference computes in float64 throughout (the model's compute dtype too)
        net = YOLOv8("t", num_classes=3, dtype=dt, impl=impl)
        with jax.enable_x64(x64):
            v = jax.tree.map(lambda a: jnp.asarray(a, dt), v0)
            x = jnp.asarray(images, dt)

            def loss(params):
                out = net.apply(
                    {"params": params, "batch_stats": v["batch_stats"]},
                    x,
                    train=train,
                    mutable=["batch_stats"] if train else False,
                )
                out, stats = out if train else (out, None)
                return sum(jnp.vdot(o, jnp.asarray(c, dt)) for o, c in zip(out, cts)), (out, stats)

            (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
            return jax.tree.map(np.asarray, (out, stats, grads))

    # Eval mode: the outputs (running statistics; its gradients are not used in training).
    eval_out = [jax.jit(m.apply)(v0, images) for m in (plain, model)]
    for a, e in zip(eval_out[1], eval_out[0]):
        close(a, e, what="outputs train=False")
    for train in (True,):
        o0, s0, g0 = run(PLAIN, train)
        o1, s1, g1 = run(LayerImpl(), train)
        _, _, g64 = run(PLAIN, train, x64=True)
        for a, e in zip(o1, o0):
            close(a, e, what=f"outputs train={train}")
        if train:
            tree_close(s1, s0, what="batch_stats")
        leaves = jax.tree_util.tree_leaves_with_path(g64)
        errs = [
            (jax.tree_util.keystr(path), rel_err(gp, ref), rel_err(gf, ref))
            for (path, ref), gp, gf in zip(leaves, jax.tree.leaves(g0), jax.tree.leaves(g1))
        ]
        worst_plain = max(e for _, e, _ in errs)
        for name, e_plain, e_fast in errs:
            assert e_fast <= max(2e-5, 1.5 * worst_plain), (
                f"grad {name} train={train}: fast {e_fast:.1e} from float64; the plain "
                f"path's worst leaf is {worst_plain:.1e} (this leaf {e_plain:.1e})"
            )
        for (path, _), gp, gf in zip(leaves, jax.tree.leaves(g0), jax.tree.leaves(g1)):
            close(gf, gp, rtol=2e-4, what=f"grad {jax.tree_util.keystr(path)} fast vs plain")
