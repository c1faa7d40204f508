"""What the tests share, in one place (`from tests.helpers import ...`; no test imports another
test file): the fixtures folder, the stage-2 loss weights, float32 tolerances and a relative
comparison, synthetic head outputs and targets for the loss tests, a RefDet batch."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jdet.boxes import make_anchors

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# The original's stage-2 loss weights (configs/refdet_n.py stage 2 and jdet.config.base_config;
# tests/test_train.py checks that they agree).
STAGE2_WEIGHTS = dict(box=7.5, cls=0.5, dfl=0.75, supcon=1.2, cpe=0.6, triplet=0.3)

RTOL = 1e-5  # float32: the same function computed two ways (fast vs plain layers, jit vs eager)


def rel_err(actual, expected) -> float:
    """max |a − e| / (|e| + max|e|·1e-2): relative, with a floor for near-zero entries."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(a - e) / (np.abs(e) + 1e-2 * np.abs(e).max() + 1e-30)))


def close(actual, expected, rtol=RTOL, what=""):
    """Assert `rel_err(actual, expected) <= rtol` (same shapes)."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, what
    err = rel_err(a, e)
    assert err <= rtol, f"{what}: max relative error {err:.2e} > {rtol:.0e}"


def tree_close(actual, expected, rtol=RTOL, what=""):
    """`close` on every leaf of two pytrees of the same structure."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        close(a, e, rtol, f"{what} {jax.tree_util.keystr(path)}")


def refdet_batch(b=2, n=2, k=3, hw=(320, 320), s=256, key=0):
    """A RefDet training batch: b queries of hw, n ways × k support photos of s², boxes."""
    keys = jax.random.split(jax.random.PRNGKey(key), 2)
    boxes = jnp.array(
        [[[20.0, 30.0, 60.0, 90.0], [0, 0, 0, 0]], [[5.0, 5.0, 40.0, 28.0], [30, 20, 60, 60]]]
    )
    boxes = boxes * (hw[0] / 64)
    return dict(
        query=jax.random.uniform(keys[0], (b, *hw, 3)),
        support=jax.random.uniform(keys[1], (b, n, k, s, s, 3)),
        support_mask=jnp.array([[True, True], [True, False]])[:b, :n],
        boxes=boxes[:b],
        labels=jnp.array([[0, 0], [0, 0]])[:b],
        box_mask=jnp.array([[True, False], [True, True]])[:b],
    )


# ------------------------------------------------------------------ loss-test head outputs

IMG = 64
FEAT_HW = [(8, 8), (4, 4), (2, 2)]
STRIDES = [8, 16, 32]


def all_finite(tree) -> bool:
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


def head_outputs(key, batch=2, num_bins=17, num_classes=3, dim=8, scale=1.0, triplet=12):
    """Random head outputs for a 64×64 image at strides 8/16/32 (A = 84)."""
    points, strides = make_anchors(FEAT_HW, STRIDES)
    a = points.shape[0]
    k = jax.random.split(key, 5)
    out = dict(
        dist=scale * jax.random.normal(k[0], (batch, a, 4, num_bins)),
        cls=scale * jax.random.normal(k[1], (batch, a, num_classes)),
        anchors=points,
        strides=strides,
        embed=jax.random.normal(k[2], (batch, a, dim)),
        prototypes=jax.random.normal(k[3], (batch, num_classes, dim)),
    )
    if triplet:
        out.update(
            triplet_embed=jax.random.normal(k[4], (triplet, dim)),
            triplet_labels=jnp.arange(triplet) % num_classes,
            triplet_mask=jnp.ones((triplet,), bool),
        )
    return out


def simple_batch():
    """Two images: three GTs (two overlapping) and one big GT; M = 4 padded."""
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, :3] = [[8, 8, 40, 40], [20, 4, 60, 30], [30, 30, 62, 62]]
    boxes[1, 0] = [2, 2, 60, 58]
    labels = np.array([[0, 1, 2, 0], [1, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    return dict(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels), box_mask=jnp.asarray(mask))


NON_DIFF = ("anchors", "strides", "triplet_labels", "triplet_mask")


def split_outputs(out):
    """(differentiable head outputs, constants) of a head_outputs dict."""
    params = {k: v for k, v in out.items() if k not in NON_DIFF}
    return params, {k: v for k, v in out.items() if k in NON_DIFF}


def value_and_grad_outputs(loss_fn, out):
    """value_and_grad of loss_fn(outputs) w.r.t. the float head outputs only."""
    params, const = split_outputs(out)
    return jax.value_and_grad(lambda p: loss_fn({**p, **const}))(params)
