"""A synthetic detection problem for checks and benchmarks, and the per-term gradient demo.

`make_probe` builds a YOLOv8-shaped dual head in miniature: random (fixed) feature maps at
strides 8/16/32 for a square image, and learnable 1×1 projections to DFL bins, class logits
and per-anchor embeddings, plus support features projected to prototypes and to 256-d triplet
embeddings (the original's 384→256 projection), and random padded GT boxes. Its gradients
flow through every loss term into real parameters, which is what `per_term_grads` needs.
`python -m benchmarks losses` times it; `python -m benchmarks probe` prints the per-term
gradient check (✓/✗ table) on one synthetic batch.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdet.boxes import make_anchors
from jdet.losses.detection import LossConfig, loss_terms

LEVEL_CHANNELS = (64, 128, 256)  # YOLOv8n neck outputs P3/P4/P5
STRIDES = (8, 16, 32)


def make_probe(
    key: jax.Array,
    *,
    batch: int = 8,
    image: int = 320,
    num_boxes: int = 20,
    ways: int = 2,
    shots: int = 3,
    num_bins: int = 17,
    embed_dim: int = 64,
    support_dim: int = 384,
    triplet_dim: int = 256,
) -> tuple[dict, dict, dict, Any]:
    """Returns (params, inputs, batch_targets, apply_fn) with apply_fn(params, inputs) → outputs."""
    feat_hw = [(image // s, image // s) for s in STRIDES]
    anchors, strides = make_anchors(feat_hw, STRIDES)
    keys = iter(jax.random.split(key, 32))
    out_ch = 4 * num_bins
    params: dict[str, Any] = {}
    feats = []
    for level, ((h, w), c, s) in enumerate(zip(feat_hw, LEVEL_CHANNELS, STRIDES)):
        feats.append(jax.random.normal(next(keys), (batch, h, w, c)))
        scale = 1.0 / math.sqrt(c)
        # The ultralytics prior for the class bias: log(5 / nc / (640 / s)²).
        cls_bias = math.log(5 / ways / (640 / s) ** 2)
        params[f"level{level}"] = {
            "box_w": scale * jax.random.normal(next(keys), (c, out_ch)),
            "box_b": jnp.ones((out_ch,)),
            "cls_w": scale * jax.random.normal(next(keys), (c, ways)),
            "cls_b": jnp.full((ways,), cls_bias),
            "emb_w": scale * jax.random.normal(next(keys), (c, embed_dim)),
        }
    support = jax.random.normal(next(keys), (batch, ways, shots, support_dim))
    params["proto_w"] = jax.random.normal(next(keys), (support_dim, embed_dim)) / math.sqrt(
        support_dim
    )
    params["triplet_w"] = jax.random.normal(next(keys), (support_dim, triplet_dim)) / math.sqrt(
        support_dim
    )
    params["triplet_b"] = jnp.zeros((triplet_dim,))

    inputs = {"feats": feats, "support": support, "anchors": anchors, "strides": strides}

    def apply_fn(p, x):
        dist, cls, emb = [], [], []
        for level, f in enumerate(x["feats"]):
            q = p[f"level{level}"]
            b = f.shape[0]
            dist.append((f @ q["box_w"] + q["box_b"]).reshape(b, -1, 4, num_bins))
            cls.append((f @ q["cls_w"] + q["cls_b"]).reshape(b, -1, ways))
            emb.append((f @ q["emb_w"]).reshape(b, -1, embed_dim))
        sup = x["support"]  # [B, N, K, 384]
        prototypes = sup.mean(2) @ p["proto_w"]  # [B, N, D]
        trip = sup.reshape(-1, sup.shape[-1]) @ p["triplet_w"] + p["triplet_b"]  # [B·N·K, 256]
        trip_labels = jnp.broadcast_to(jnp.arange(sup.shape[1])[None, :, None], sup.shape[:3])
        return {
            "dist": jnp.concatenate(dist, 1),
            "cls": jnp.concatenate(cls, 1),
            "embed": jnp.concatenate(emb, 1),
            "prototypes": prototypes,
            "anchors": x["anchors"],
            "strides": x["strides"],
            "triplet_embed": trip,
            "triplet_labels": trip_labels.reshape(-1),
            "triplet_mask": jnp.ones(trip.shape[:1], bool),
        }

    rng = np.random.default_rng(0)
    wh = rng.uniform(8, image / 3, (batch, num_boxes, 2))
    xy = rng.uniform(0, 1, (batch, num_boxes, 2)) * (image - wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    count = rng.integers(1, num_boxes + 1, batch)
    box_mask = np.arange(num_boxes)[None] < count[:, None]
    targets = {
        "boxes": jnp.asarray(boxes),
        "labels": jnp.asarray(rng.integers(0, ways, (batch, num_boxes)), jnp.int32),
        "box_mask": jnp.asarray(box_mask),
        "support_mask": jnp.ones((batch, ways), bool),
    }
    return params, inputs, targets, apply_fn


def probe_terms_fn(apply_fn, cfg: LossConfig | None = None):
    """terms_fn(params, inputs, targets) → dict of unweighted terms, for per_term_grads
    (cfg: the loss configuration, default `LossConfig()`)."""
    cfg = LossConfig() if cfg is None else cfg

    def terms_fn(params, inputs, targets):
        return loss_terms(apply_fn(params, inputs), targets, cfg)[0]

    return terms_fn
