"""Synthetic head outputs and targets shared by the loss tests (imported as `from tests.head_fixtures import ...`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdet.boxes import make_anchors

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
