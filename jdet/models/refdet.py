"""RefDet: the whole reference-based detector (the original's YOLOv8n-RefDet), Flax linen.

    support [B, N, K, S, S, 3] ──ViT (DINOv3 S/16)──▶ CLS [B, N, K, 384]
        ├─ PrototypeProjections ─▶ mean over K ─▶ prototypes {p2..p5: [B, N, 32/64/128/256]}
        └─ TripletProjection ─▶ triplet embeddings [B·N·K, 256]
    query [B, H, W, 3] ──YOLOv8 (features only)──▶ {p2, p3, p4, p5}
        ──PSALMFusion(one prototype per image)──▶ {p2..p5: 128/256/512/512 ch}
        ──DualDetectionHead──▶ base head (nc_base classes) + prototype head (N ways)
        ──ContrastiveHead──▶ per-anchor 128-d embeddings (CPE / SupCon)

Follows the original at 075f362 (docs/original.md §2: yolov8n_refdet.py and the modules it
builds); differences, all deliberate:
  - the scale projections are trained (the original built prototypes under `no_grad`, so
    they stayed at their random initialisation); `train_projections=False` restores that;
  - CPE contrasts per-anchor features from a FSCE-style contrastive head (1×1 conv → ReLU →
    1×1 conv, 128-d, per scale), since the fused maps differ in width across scales;
  - one `num_bins` (= reg_max + 1 = 17) for every box branch and for decoding;
  - the query backbone is YOLOv8's backbone + neck only: the original also held ultralytics'
    Detect head (0.90M parameters for 80 classes) without using it.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdet.boxes import make_anchors
from jdet.dtypes import l2_normalize
from jdet.models.fusion import PSALMFusion, select_fusion_prototypes
from jdet.models.heads import DualDetectionHead, PrototypeProjections, TripletProjection
from jdet.models.impl import LayerImpl
from jdet.models.vit import ViT, imagenet_normalize, vit_frozen_patterns
from jdet.models.yolo import TAP_STRIDES, YOLOv8, tap_channels

SCALES = ("p2", "p3", "p4", "p5")


class ContrastiveHead(nn.Module):
    """FSCE's contrastive branch per scale: 1×1 conv → ReLU → 1×1 conv to `dim`, per anchor."""

    dim: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = {}
        for s, f in feats.items():
            y = nn.relu(nn.Dense(self.dim, dtype=self.dtype, name=f"{s}_0")(f))
            out[s] = nn.Dense(self.dim, dtype=self.dtype, name=f"{s}_1")(y)
        return out


def _flatten_levels(maps: list[jax.Array]) -> jax.Array:
    """[B, H_i, W_i, C] per level → [B, Σ H_i·W_i, C] (row-major per level, fine → coarse)."""
    return jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1)


class RefDet(nn.Module):
    """Reference-based detector.

    Attributes:
      yolo_scale: query backbone scale ("n" as the original; "t" for tests).
      encoder: ViT variant ("dinov3-S/16" as the original, "dinov2-S/14", tiny test variants).
      frozen_blocks: support-encoder blocks frozen with their embeddings (original: 6).
      nc_base: classes of the base head (80; 0 drops it).
      num_bins: DFL bins per side for every box branch (reg_max + 1 = 17).
      proto_dims: prototype widths per scale; default (None) = the query taps' widths (the
        original's "Lego" design: 32/64/128/256 for YOLOv8n), which the fusion requires.
      fusion_out, num_heads: fused widths and attention heads, as in the original.
      contrastive_dim: width of the per-anchor contrastive embeddings (128, as FSCE).
      train_projections: let gradients reach the scale projections (the original did not).
      support_groups: 0 = every query image has its own support set (encode B·N·K photos);
        E > 0 = the batch is E episodes of B/E consecutive queries that share one support set
        (the episodic pipeline's layout), so only E·N·K photos go through the ViT — the
        support of the first query of each episode is used for all of its queries.
      proto_logit_bias: prior-initialised learnable bias per scale on the prototype logits
        (not in the original; see heads.PrototypeDetectionHead).
      dtype: compute dtype; parameters stay float32, outputs used by losses are float32.
      impl: which code the layers trace to: the convolution backend ("auto" | "onednn" | "xla",
        default the environment's JDET_CPU_CONV) and the fast path (jdet.models.impl).

    `__call__(batch, train=False)` with
      batch["query"]        [B, H, W, 3] f32 in [0, 1], H and W multiples of 32;
      batch["support"]      [B, N, K, S, S, 3] f32 in [0, 1] (S a multiple of the patch);
      batch["support_mask"] [B, N] bool, real ways;
      batch["query_way"]    optional [B] i32: the way whose prototype conditions the fusion (the
                            original used the frame's class id); default: mean of real ways;
      batch["class_ids"]    optional [B, N] i32 global class id per way (triplet labels).
    returns a dict (A = Σ_scales H/s · W/s anchors over strides 4, 8, 16, 32):
      dist       [B, A, 4, num_bins] prototype-head DFL logits (sides l, t, r, b)
      cls        [B, A, N] prototype-head logits = temperature · cosine, padded ways −1e9
      proto_cos  [B, A, N] the cosines themselves (prototype contrastive loss), padded 0
      embed      [B, A, contrastive_dim] per-anchor contrastive embeddings
      anchors    [A, 2] grid units; strides [A, 1]
      base_dist  [B, A, 4, num_bins], base_cls [B, A, nc_base] (when nc_base > 0)
      prototypes {p2..p5: [B, N, d]} unit-norm prototypes (cacheable per video)
      triplet_embed [B'·N·K, 256], triplet_labels [B'·N·K] i32, triplet_mask [B'·N·K] bool
        with B' = B, or E when support_groups = E
    """

    yolo_scale: str = "n"
    encoder: str = "dinov3-S/16"
    frozen_blocks: int = 6
    nc_base: int = 80
    num_bins: int = 17
    proto_dims: tuple[int, ...] | None = None
    fusion_out: tuple[int, ...] = (128, 256, 512, 512)
    num_heads: int = 4
    contrastive_dim: int = 128
    train_projections: bool = True
    support_groups: int = 0
    proto_logit_bias: bool = False
    dtype: Any = jnp.float32
    impl: LayerImpl = LayerImpl()

    def setup(self):
        channels = tuple(tap_channels(self.yolo_scale)[s] for s in SCALES)
        proto_dims = channels if self.proto_dims is None else tuple(self.proto_dims)
        self.support_encoder = ViT(self.encoder, dtype=self.dtype, frozen_blocks=self.frozen_blocks)
        self.projections = PrototypeProjections(proto_dims, dtype=self.dtype)
        self.triplet_projection = TripletProjection(256, dtype=self.dtype)
        self.backbone = YOLOv8(self.yolo_scale, num_classes=1, dtype=self.dtype, impl=self.impl)
        self.fusion = PSALMFusion(
            channels, self.fusion_out, self.num_heads, dtype=self.dtype, impl=self.impl
        )
        self.head = DualDetectionHead(
            self.nc_base,
            proto_dims,
            self.num_bins,
            tuple(TAP_STRIDES[s] for s in SCALES),
            logit_bias=self.proto_logit_bias,
            dtype=self.dtype,
            impl=self.impl,
        )
        self.contrastive = ContrastiveHead(self.contrastive_dim, dtype=self.dtype)

    def encode_support(self, support: jax.Array, support_mask: jax.Array) -> dict[str, Any]:
        """Support photos → prototypes and triplet embeddings (computed once per video).

        support: [B, N, K, S, S, 3] f32 in [0, 1]; support_mask: [B, N] bool.
        """
        b, n, k = support.shape[:3]
        cls = self.support_encoder(
            imagenet_normalize(support.reshape(b * n * k, *support.shape[3:]))
        )["cls"]
        cls = cls.reshape(b, n, k, -1).astype(jnp.float32)
        per_shot = self.projections(cls)  # {s: [B, N, K, d]}
        if not self.train_projections:
            per_shot = jax.tree.map(jax.lax.stop_gradient, per_shot)
        # The original averages the K references' prototypes and re-normalises.
        prototypes = {
            s: l2_normalize(p.mean(axis=2).astype(jnp.float32), keep_dtype=True)
            for s, p in per_shot.items()
        }
        triplet = self.triplet_projection(cls).reshape(b * n * k, -1).astype(jnp.float32)
        return dict(prototypes=prototypes, triplet_embed=triplet)

    def __call__(self, batch: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
        query, support = batch["query"], batch["support"]
        if query.ndim != 4 or support.ndim != 6:
            raise ValueError(
                f"RefDet expects query [B,H,W,3] and support [B,N,K,S,S,3]; got {query.shape}, "
                f"{support.shape}"
            )
        b, n, k = support.shape[:3]
        support_mask = batch.get("support_mask")
        support_mask = jnp.ones((b, n), bool) if support_mask is None else support_mask.astype(bool)
        if self.support_groups:
            if b % self.support_groups:
                raise ValueError(
                    f"batch of {b} queries is not {self.support_groups} equal episodes "
                    "(model.support_groups)"
                )
            per = b // self.support_groups
            enc = self.encode_support(support[::per], support_mask[::per])
            enc = dict(
                prototypes={s: jnp.repeat(p, per, axis=0) for s, p in enc["prototypes"].items()},
                triplet_embed=enc["triplet_embed"],
            )
            trip_mask, trip_rows = support_mask[::per], slice(None, None, per)
        else:
            enc = self.encode_support(support, support_mask)
            trip_mask, trip_rows = support_mask, slice(None)
        out = self.detect(query, enc["prototypes"], support_mask, batch.get("query_way"), train)
        class_ids = batch.get("class_ids")
        labels = (
            jnp.broadcast_to(jnp.arange(n)[None, :], (b, n)) if class_ids is None else class_ids
        )
        out.update(
            prototypes=enc["prototypes"],
            triplet_embed=enc["triplet_embed"],
            triplet_labels=jnp.repeat(labels[trip_rows].reshape(-1), k).astype(jnp.int32),
            triplet_mask=jnp.repeat(trip_mask.reshape(-1), k),
        )
        return out

    def detect(self, query, prototypes, support_mask, query_way=None, train: bool = False):
        """Query images + (cached) prototypes → anchor-level outputs (see the class docstring)."""
        feats = self.backbone(query, train, features_only=True)
        fused = self.fusion(
            feats, select_fusion_prototypes(prototypes, support_mask, query_way), train
        )
        head = self.head(fused, prototypes, support_mask, train)
        hw = [(feats[s].shape[1], feats[s].shape[2]) for s in SCALES]
        anchors, strides = make_anchors(hw, [TAP_STRIDES[s] for s in SCALES])
        bsz = query.shape[0]

        def dist(maps):
            return _flatten_levels(maps).reshape(bsz, -1, 4, self.num_bins).astype(jnp.float32)

        # Cosines per level (prototype widths differ across levels), for the prototype loss.
        cos = [
            jnp.einsum("bhwd,bnd->bhwn", z, jnp.where(support_mask[..., None], prototypes[s], 0.0))
            for s, z in zip(SCALES, head["prototype_features"])
        ]
        out = dict(
            dist=dist(head["prototype_boxes"]),
            cls=_flatten_levels(head["prototype_sim"]).astype(jnp.float32),
            proto_cos=_flatten_levels(cos).astype(jnp.float32),
            embed=_flatten_levels(list(self.contrastive(fused).values())).astype(jnp.float32),
            anchors=anchors,
            strides=strides,
        )
        if self.nc_base > 0:
            out["base_dist"] = dist(head["standard_boxes"])
            out["base_cls"] = _flatten_levels(head["standard_cls"]).astype(jnp.float32)
        return out


def refdet_param_groups(params: dict[str, Any], frozen_blocks: int) -> dict[str, Any]:
    """Pytree like RefDet params labelling each leaf with its optimiser group.

    Groups (the original's layer-wise learning rates, docs/original.md §4): "frozen" (support
    encoder embeddings + first `frozen_blocks` blocks, never updated), "support_encoder"
    (0.1× lr), "backbone" (1×), "fusion" (2×), "heads" (2×: dual head, projections,
    contrastive head).
    """
    frozen = [re.compile(p) for p in vit_frozen_patterns(frozen_blocks, prefix="support_encoder/")]
    top_group = {
        "support_encoder": "support_encoder",
        "backbone": "backbone",
        "fusion": "fusion",
        "head": "heads",
        "projections": "heads",
        "triplet_projection": "heads",
        "contrastive": "heads",
    }

    def label(path, _leaf) -> str:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if any(p.search(name) for p in frozen):
            return "frozen"
        top = name.split("/", 1)[0]
        if top not in top_group:
            raise ValueError(f"refdet_param_groups: unknown parameter {name}")
        return top_group[top]

    return jax.tree_util.tree_map_with_path(label, params)
