"""YOLOv8 in Flax: shapes, parameter counts, weight import and forward parity with ultralytics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdet.distributed import run_once
from jdet.models.convert import yolo_from_torch
from jdet.models.yolo import YOLOv8, tap_channels
from tests.helpers import FIXTURES


def _param_count(module, size=64, **kw):
    v = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), **kw)
    )
    return sum(x.size for x in jax.tree.leaves(v["params"]))


# ultralytics model.info() parameter counts (80 classes): YOLOv8n 3,157,200; YOLOv8s 11,166,560.
# They include Detect's DFL conv, a frozen 1×1 conv of 16 weights (0 … 15) that jdet replaces
# by computing the expectation directly: +16 below.
@pytest.mark.parametrize("scale,expected", [("n", 3_157_200), ("s", 11_166_560)])
def test_param_counts_match_ultralytics(scale, expected):
    assert _param_count(YOLOv8(scale, 80)) + 16 == expected


@pytest.mark.parametrize("scale", ["t", "n", "s"])
@pytest.mark.parametrize("hw", [(320, 320), (640, 640), (256, 384)])
def test_output_shapes(scale, hw):
    m = YOLOv8(scale, num_classes=2)
    x = jnp.zeros((2, *hw, 3))
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))
    outs = jax.eval_shape(lambda v: m.apply(v, x), v)
    assert [o.shape for o in outs] == [(2, hw[0] // s, hw[1] // s, 64 + 2) for s in (8, 16, 32)]
    feats = jax.eval_shape(lambda v: m.apply(v, x, features_only=True), v)
    ch = tap_channels(scale)
    for name, s in (("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)):
        assert feats[name].shape == (2, hw[0] // s, hw[1] // s, ch[name])
    if scale == "n":
        assert ch == {"p2": 32, "p3": 64, "p4": 128, "p5": 256}


def test_bad_input_shapes_raise():
    m = YOLOv8("t", 2)
    with pytest.raises(ValueError, match="multiples of 32"):
        m.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 64, 3)))
    with pytest.raises(ValueError, match="B, H, W, 3"):
        m.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64)))
    with pytest.raises(ValueError, match="unknown YOLOv8 scale"):
        YOLOv8("q", 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def _fixture():
    f = np.load(FIXTURES / "yolo_tiny.npz")
    sd = {k[3:]: f[k] for k in f.files if k.startswith("sd/")}
    return f, sd


def test_forward_parity_with_ultralytics():
    f, sd = _fixture()
    variables = yolo_from_torch(sd, "t", int(f["nc"]))
    m = YOLOv8("t", int(f["nc"]))
    outs = jax.jit(lambda v, x: m.apply(v, x))(variables, jnp.asarray(f["input"]))
    for o, s in zip(outs, (8, 16, 32)):
        np.testing.assert_allclose(o, f[f"out_s{s}"], rtol=1e-4, atol=1e-4)
    feats = m.apply(variables, jnp.asarray(f["input"]), features_only=True)
    for name in ("p2", "p3", "p4", "p5"):
        np.testing.assert_allclose(feats[name], f[name], rtol=1e-4, atol=1e-4)


def test_conversion_names_missing_and_unexpected_tensors():
    f, sd = _fixture()
    broken = dict(sd)
    del broken["model.2.m.0.cv1.conv.weight"]
    broken["model.99.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        yolo_from_torch(broken, "t", 3)
    assert "model_2/m_0/cv1/conv/kernel" in str(e.value)
    assert "model.99.extra.weight" in str(e.value)
    with pytest.raises(ValueError, match="shape mismatch"):
        yolo_from_torch(sd, "t", 5)  # class branch has 3 outputs in the checkpoint


def test_bf16_compute_keeps_f32_params_and_tracks_f32():
    f, sd = _fixture()
    variables = yolo_from_torch(sd, "t", 3)
    x = jnp.asarray(f["input"])
    ref = YOLOv8("t", 3).apply(variables, x)
    got = YOLOv8("t", 3, dtype=jnp.bfloat16).apply(variables, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    for a, b in zip(got, ref):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, atol=0.15 * float(jnp.abs(b).max())
        )


def test_train_mode_updates_batch_stats():
    m = YOLOv8("t", 3)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
    v = run_once(jax.jit(m.init), jax.random.PRNGKey(1), x)
    _, mutated = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    before = jax.tree.leaves(v["batch_stats"])
    after = jax.tree.leaves(mutated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
