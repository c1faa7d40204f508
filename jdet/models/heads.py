"""RefDet support projections and dual detection head in Flax linen, NHWC.

Follows the original's (it-dainb/zalo_ai_2025 at 075f362)
``src/models/dino_encoder.py`` ``DINOSupportEncoder`` (``proj_p2..proj_p5``, ``triplet_proj``)
and ``src/models/dual_head.py`` (``Conv``, ``StandardDetectionHead``,
``PrototypeDetectionHead``, ``DualDetectionHead``): same layers, same forward math, same
parameter counts, except for these deliberate differences:

* **No decoding in the head.** The original builds a ``DFL(c1=reg_max)`` module (a frozen
  1×1 conv holding ``arange(16)``, 16 weights, in each of its two heads) although its box
  branches emit ``4·(reg_max + 1) = 68`` channels: a 16-bin decoder for 17-bin logits. jdet
  returns raw logits only and has one knob, ``num_bins`` (= reg_max + 1, default 17), from
  which the branch widths derive; decoding lives in jdet's post-processing. Hence the dual
  head has 32 parameters fewer than the original's ``sum(p.numel())`` (4,515,073 vs
  4,515,105); the trainable counts are equal.
* **Per-image ways with a mask.** The original scores anchors against N prototypes shared by
  the whole batch (``[N, D]``) and, when N happens to equal the batch size B > 1, silently
  switches to "one prototype per image" and keeps only the diagonal (a shape-changing bug).
  jdet takes ``[B, N, D]`` (or ``[N, D]``, broadcast) with ``support_mask [B, N]``; padded
  ways get the finite logit ``MASKED_LOGIT`` and no gradient.
* **ultralytics bias init** (the original keeps torch's default init): box branches 1.0, class
  branch ``log(5 / nc / (640 / s)²)`` at stride s.

Batch norms use torch's defaults (eps 1e-5, momentum 0.1), as the original's ``Conv`` builds a
plain ``nn.BatchNorm2d``: `jdet.models.layers.ConvBNAct` / `DetectBranch` with torch's BN
settings. Module names mirror the torch state-dict names with container indices joined
by ``_`` (``standard_head.cv2.0.1.bn`` → ``standard_head/cv2_0/1/bn``), so
`jdet.models.convert_refdet` is a renaming.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdet.dtypes import l2_normalize
from jdet.models.fusion import (
    SCALE_NAMES,
    TORCH_BN_EPS,
    TORCH_BN_MOMENTUM,
    TORCH_LN_EPS,
    conv2d,
)
from jdet.models.impl import LayerImpl
from jdet.models.layers import ConvBNAct, DetectBranch

Dtype = Any

MASKED_LOGIT = -1e9  # logit of padded ways: finite (−inf would make NaN in softmax/BCE)
DEFAULT_STRIDES = (4, 8, 16, 32)


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=TORCH_LN_EPS, use_fast_variance=False, dtype=dtype, name=name)


class PrototypeProjections(nn.Module):
    """Per-scale prototypes from the support CLS feature (dino_encoder.py ``proj_p2..proj_p5``).

    ``p_s = normalize(GELU(LayerNorm(Linear(normalize(cls)))))`` with exact (erf) GELU, as
    ``DINOSupportEncoder.forward(normalize=True)`` computes it. Normalising an already
    L2-normalised CLS is a no-op, so callers may pass either.

    ``__call__(cls [..., F] float)`` → {"p2": [..., 32], "p3": [..., 64], ...} float, unit norm
    (the last ``len(dims)`` of p2..p5). 185,760 parameters for F = 384, dims 32/64/128/256.
    """

    dims: Sequence[int] = (32, 64, 128, 256)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls: jax.Array) -> dict[str, jax.Array]:
        x = l2_normalize(cls, keep_dtype=True).astype(self.dtype)
        out = {}
        for s, d in zip(SCALE_NAMES[len(SCALE_NAMES) - len(self.dims) :], self.dims):
            y = nn.Dense(d, dtype=self.dtype, name=f"proj_{s}_0")(x)
            y = _layer_norm(self.dtype, f"proj_{s}_1")(y)
            out[s] = l2_normalize(nn.gelu(y, approximate=False), keep_dtype=True)
        return out


class TripletProjection(nn.Module):
    """Learnable 384 → 256 embedding for the triplet loss (dino_encoder.py ``triplet_proj``).

    ``LayerNorm(Linear(normalize(cls)))``; the original applies it to the L2-normalised CLS
    token and does not normalise the result (the triplet loss does). 99,072 parameters.

    ``__call__(cls [..., F] float)`` → [..., dim] float.
    """

    dim: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls: jax.Array) -> jax.Array:
        x = l2_normalize(cls, keep_dtype=True).astype(self.dtype)
        x = nn.Dense(self.dim, dtype=self.dtype, name="triplet_proj_0")(x)
        return _layer_norm(self.dtype, "triplet_proj_1")(x)


def ConvBN(
    features: int,
    kernel: int = 1,
    dtype: Dtype = jnp.float32,
    impl: LayerImpl = LayerImpl(),
    name: str | None = None,
):
    """dual_head.py ``Conv``: Conv2d(k, pad k//2, no bias) → BatchNorm2d (torch eps) → SiLU."""
    return ConvBNAct(
        features,
        kernel,
        dtype=dtype,
        bn_eps=TORCH_BN_EPS,
        bn_momentum=TORCH_BN_MOMENTUM,
        impl=impl,
        name=name,
    )


def Branch(hidden: int, out: int, bias_init: float, dtype: Dtype, impl: LayerImpl, name: str):
    """``Sequential(Conv 3×3, Conv 3×3, Conv2d 1×1 with bias)``: one box or class branch."""
    return DetectBranch(
        hidden,
        out,
        bias_init,
        dtype,
        bn_eps=TORCH_BN_EPS,
        bn_momentum=TORCH_BN_MOMENTUM,
        impl=impl,
        name=name,
    )


def box_hidden(in_channels: Sequence[int], num_bins: int) -> int:
    """Box-branch width, the original's ``max(16, ch[0] // 4, reg_max · 4)``, reg_max = bins − 1."""
    return max(16, in_channels[0] // 4, 4 * (num_bins - 1))


class StandardDetectionHead(nn.Module):
    """dual_head.py ``StandardDetectionHead``: YOLOv8 decoupled head on every scale.

    ``__call__(feats, train)``: feats list of [B, H_i, W_i, C_i]. Returns (boxes, cls): lists of
    [B, H_i, W_i, 4·num_bins] (side-major l, t, r, b × bins) and [B, H_i, W_i, nc] raw logits.
    """

    nc: int = 80
    num_bins: int = 17
    strides: Sequence[int] = DEFAULT_STRIDES
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool = False):
        ch = [f.shape[-1] for f in feats]
        c_box, c_cls = box_hidden(ch, self.num_bins), max(ch[0], self.nc)
        boxes, cls = [], []
        for i, (f, s) in enumerate(zip(feats, self.strides)):
            prior = math.log(5 / self.nc / (640 / s) ** 2)  # ultralytics Detect.bias_init
            boxes.append(
                Branch(c_box, 4 * self.num_bins, 1.0, self.dtype, self.impl, f"cv2_{i}")(f, train)
            )
            cls.append(Branch(c_cls, self.nc, prior, self.dtype, self.impl, f"cv3_{i}")(f, train))
        return boxes, cls


class PrototypeDetectionHead(nn.Module):
    """dual_head.py ``PrototypeDetectionHead``: cosine matching against support prototypes.

    Per scale: ``z = Conv2d1×1(Conv(x))`` to the prototype width, ``sim = temperature ·
    cos(z, prototype_n)`` for every way n, plus its own box branch. ``temperature`` is one
    learnable scalar (``temperature_init``, 10.0), shared by all scales. With ``logit_bias``
    (not in the original) each scale adds a learnable bias initialised to ultralytics' class prior
    ``log(5 / (640 / s)²)`` (one class): background anchors then start near probability 0
    instead of sigmoid(10·cos) ≈ 0.5, which is what makes the original's cls term start in
    the thousands and its scores rise slowly.

    ``__call__(feats, prototypes, support_mask, train)``:
      feats: list of [B, H_i, W_i, C_i]; prototypes: list of [B, N, D_i] (or [N, D_i]);
      support_mask: [B, N] bool.
    Returns (boxes [B, H_i, W_i, 4·num_bins], sim [B, H_i, W_i, N] f32 with padded ways =
    MASKED_LOGIT, features [B, H_i, W_i, D_i] L2-normalised), each a list over scales.
    """

    proto_dims: Sequence[int] = (32, 64, 128, 256)
    num_bins: int = 17
    temperature_init: float = 10.0
    logit_bias: bool = False
    strides: Sequence[int] = DEFAULT_STRIDES
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, feats, prototypes, support_mask, train: bool = False):
        init = nn.initializers.constant(self.temperature_init)
        temperature = self.param("temperature", init, ())
        c_box = box_hidden([f.shape[-1] for f in feats], self.num_bins)
        boxes, sims, embeds = [], [], []
        for i, (f, proto, d) in enumerate(zip(feats, prototypes, self.proto_dims)):
            if proto.shape[-1] != d:
                raise ValueError(f"prototypes at scale {i} must have {d} dims, got {proto.shape}")
            z = ConvBN(d, 1, self.dtype, self.impl, name=f"feature_proj_{i}_0")(f, train)
            z = conv2d(d, 1, dtype=self.dtype, impl=self.impl, name=f"feature_proj_{i}_1")(z)
            z = l2_normalize(z.astype(jnp.float32), keep_dtype=True)  # [B, H, W, D]
            proto = jnp.broadcast_to(proto, (f.shape[0], *proto.shape[-2:])).astype(jnp.float32)
            # Zero the padded ways first: whatever they hold (even NaN) then gets no gradient.
            p = l2_normalize(
                jnp.where(support_mask[:, :, None], proto, 0.0), keep_dtype=True
            )  # [B, N, D]
            sim = jnp.einsum("bhwd,bnd->bhwn", z, p) * temperature
            if self.logit_bias:
                prior = math.log(5 / (640 / self.strides[i]) ** 2)  # ultralytics Detect.bias_init
                sim = sim + self.param(f"bias_{i}", nn.initializers.constant(prior), ())
            sims.append(jnp.where(support_mask[:, None, None, :], sim, MASKED_LOGIT))
            embeds.append(z)
            boxes.append(
                Branch(c_box, 4 * self.num_bins, 1.0, self.dtype, self.impl, f"cv2_{i}")(f, train)
            )
        return boxes, sims, embeds


class DualDetectionHead(nn.Module):
    """dual_head.py ``DualDetectionHead`` (075f362): base-class head + prototype head.

    Attributes:
      nc_base: base classes of the standard head (80); 0 drops it, as in the original.
      proto_dims: prototype width per scale, (32, 64, 128, 256).
      num_bins: DFL bins per side (reg_max + 1 = 17), used by both box branches.
      strides: strides of the scales, only for the class-bias prior; (4, 8, 16, 32).
      temperature_init: initial value of the learnable similarity scale (10.0).
      logit_bias: a learnable per-scale bias on the prototype logits, prior-initialised (not in
        the original; see PrototypeDetectionHead).
      dtype: compute dtype (parameters stay float32).
      impl: which code the convolutions trace to (jdet.models.impl).

    ``__call__(features, prototypes=None, support_mask=None, train=False)``:
      features: {"p2": [B, H/4, W/4, 128], "p3": [B, H/8, W/8, 256], "p4": [..., 512],
        "p5": [B, H/32, W/32, 512]} float (the last ``len(proto_dims)`` of p2..p5).
      prototypes: {"p2": [B, N, 32], ..., "p5": [B, N, 256]} float (or [N, D], shared), or None
        for the original's "standard" mode (no prototype outputs). Initialise with them given.
      support_mask: [B, N] bool, True for real ways; None = all real.
    Returns a dict of lists over scales (fine → coarse), raw, nothing decoded:
      "standard_boxes":     [B, H_i, W_i, 4·num_bins] box logits, side-major (l, t, r, b) × bins
      "standard_cls":       [B, H_i, W_i, nc_base] class logits   (only when nc_base > 0)
      "prototype_boxes":    [B, H_i, W_i, 4·num_bins] box logits of the prototype head
      "prototype_sim":      [B, H_i, W_i, N] f32 temperature · cosine, padded ways = -1e9
      "prototype_features": [B, H_i, W_i, D_i] f32 unit-norm anchor embeddings (for SupCon/CPE)
    (the last three only when prototypes are given). Anchor (y, x) of scale i sits at
    ``((x + 0.5)·s_i, (y + 0.5)·s_i)``.
    """

    nc_base: int = 80
    proto_dims: Sequence[int] = (32, 64, 128, 256)
    num_bins: int = 17
    strides: Sequence[int] = DEFAULT_STRIDES
    temperature_init: float = 10.0
    logit_bias: bool = False
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @property
    def scales(self) -> tuple[str, ...]:
        return SCALE_NAMES[len(SCALE_NAMES) - len(self.proto_dims) :]

    @nn.compact
    def __call__(
        self,
        features: Mapping[str, jax.Array],
        prototypes: Mapping[str, jax.Array] | None = None,
        support_mask: jax.Array | None = None,
        train: bool = False,
    ) -> dict[str, list[jax.Array]]:
        if len(self.strides) != len(self.proto_dims):
            raise ValueError(
                f"strides {self.strides} and proto_dims {self.proto_dims} differ in length"
            )
        missing = [s for s in self.scales if s not in features]
        if missing:
            raise ValueError(f"features lack scales {missing}; expected {self.scales}")
        feats = [features[s].astype(self.dtype) for s in self.scales]
        out: dict[str, list[jax.Array]] = {}
        if self.nc_base > 0:
            boxes, cls = StandardDetectionHead(
                self.nc_base,
                self.num_bins,
                self.strides,
                self.dtype,
                self.impl,
                name="standard_head",
            )(feats, train)
            out.update(standard_boxes=boxes, standard_cls=cls)
        if prototypes is not None:
            protos = [prototypes[s] for s in self.scales]
            if support_mask is None:
                support_mask = jnp.ones((feats[0].shape[0], protos[0].shape[-2]), bool)
            boxes, sims, embeds = PrototypeDetectionHead(
                self.proto_dims,
                self.num_bins,
                self.temperature_init,
                self.logit_bias,
                self.strides,
                self.dtype,
                self.impl,
                name="prototype_head",
            )(feats, protos, support_mask.astype(bool), train)
            out.update(prototype_boxes=boxes, prototype_sim=sims, prototype_features=embeds)
        return out
