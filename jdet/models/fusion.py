"""PSALM query–support fusion in Flax linen, NHWC.

Follows the original's ``src/models/psalm_fusion.py`` (it-dainb/zalo_ai_2025 at 075f362):
``LightweightPyramidEnrichment``, ``ShortLongConvPreprocessor``, ``SupportModulatedAttention``
and ``PSALMFusion``, with the same layers, the same parameter count (776,160 for the RefDet
configuration) and the same forward math. Per scale s ∈ (p2, p3, p4, p5):

1. pyramid enrichment of the query maps (all scales together): top-down
   ``t_s = q_s + up2(conv1x1(t_{s+1}))`` (bilinear, half-pixel), bottom-up
   ``u_s = t_s + dwconv3x3_stride2(u_{s-1})``, then ``e_s = SiLU(BN(dwconv3x3(u_s))) + q_s``;
2. support-modulated linear attention on ``e_s``: Q and K come from depthwise short (3×3) →
   SiLU → long (7×7) convs and 1×1 projections to C/2 channels, V from a 1×1 projection of
   ``e_s``; per head ``context = softmax_spatial(K)ᵀ V`` and ``out = contextᵀ softmax_channel(Q)``;
   the result is scaled per channel by ``sigmoid(LayerNorm(Linear(prototype_s)))``, projected
   back to C by a 1×1 conv and added to ``e_s`` (heads per scale: ``min(num_heads, C // 16)``,
   i.e. 2/4/4/4 for C = 32/64/128/256);
3. refinement ``SiLU(BN(conv1x1(SiLU(BN(dwconv3x3(a_s))))))`` to the output width plus one
   residual from the *original* query map (1×1 conv when the widths differ, identity otherwise).

Without support (``support=None``, the original's "standard" mode) only step 3 runs, on the
query maps.

**N ways.** The fusion takes ONE prototype per query image and scale, ``[B, C_s]``, as the
original does: in its episodic training (``trainer._forward_detection_step`` →
``YOLOv8nRefDet.forward(class_ids=...)``) each query frame is fused with the averaged prototype
of the episode class it was sampled from (``prototypes[class_ids]``, background frames
included), while the detection head scores every anchor against all N prototypes. At inference
there is one class (the video's K references averaged), so both coincide. This is what the
challenge needs: a frame is always searched for one known object. `select_fusion_prototypes`
builds the fusion input from jdet's padded episode layout: it gathers way ``query_way[b]``
(the original's ``class_ids``) when given, and otherwise falls back to the L2-normalised mean of
the valid ways (padded ways masked out), which equals the gathered prototype when N = 1. We did
not fuse per way (N fusion passes): the original never does, and it would multiply the fusion
and head cost by N.

Batch norms are torch ``nn.BatchNorm2d`` with its defaults (eps 1e-5, momentum 0.1 → flax 0.9),
not ultralytics' 1e-3: the original builds them with plain ``nn.BatchNorm2d``. Module names
mirror the torch state-dict names with container indices joined by ``_`` (``attentions.p2`` →
``attentions_p2``, ``pyramid.fusions.0.1`` → ``pyramid/fusions_0_1``), so
`jdet.models.convert_refdet.fusion_from_torch` is a renaming.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdet.dtypes import l2_normalize
from jdet.models.fast_layers import DepthwiseConv
from jdet.models.impl import LayerImpl
from jdet.models.onednn_conv import OneDnnConv

Dtype = Any

SCALE_NAMES = ("p2", "p3", "p4", "p5")
TORCH_BN_EPS = 1e-5  # torch nn.BatchNorm2d defaults, as the original uses them
TORCH_BN_MOMENTUM = 0.9  # flax convention: ra = m·ra + (1 − m)·batch; torch momentum 0.1
TORCH_LN_EPS = 1e-5  # torch nn.LayerNorm default


def conv2d(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    impl: LayerImpl = LayerImpl(),
    name: str | None = None,
) -> nn.Conv:
    """torch ``nn.Conv2d(..., kernel, stride, padding=kernel // 2, groups)`` as a flax Conv
    (through oneDNN on XLA:CPU when `impl.onednn` says so; grouped ones — PSALM's have one
    input channel per group — as shifted slices when `impl.uses("depthwise")`,
    `jdet.models.fast_layers.DepthwiseConv`: same parameters either way)."""
    if groups == 1 and impl.onednn(dtype):
        return OneDnnConv(features, kernel, stride, use_bias=use_bias, name=name)
    if groups > 1 and impl.uses("depthwise"):
        return DepthwiseConv(
            features, kernel, stride, use_bias=use_bias, dtype=dtype, groups=groups, name=name
        )
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.BatchNorm:
    """torch ``nn.BatchNorm2d`` with default eps/momentum (not ultralytics' 1e-3/0.03)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=TORCH_BN_MOMENTUM,
        epsilon=TORCH_BN_EPS,
        dtype=dtype,
        name=name,
    )


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
    """torch ``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)``, NHWC.

    With half-pixel centres an output pixel 2k takes ¾ of input k and ¼ of input k − 1, pixel
    2k + 1 ¾ of k and ¼ of k + 1, indices clamped at the border. [B, H, W, C] → [B, 2H, 2W, C].
    """
    for axis in (1, 2):
        n = x.shape[axis]
        first, last = (
            jax.lax.slice_in_dim(x, 0, 1, axis=axis),
            jax.lax.slice_in_dim(x, n - 1, n, axis=axis),
        )
        prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        x = jnp.stack([even, odd], axis=axis + 1)
        x = x.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 2 :])
    return x


class PyramidEnrichment(nn.Module):
    """Follows psalm_fusion.py ``LightweightPyramidEnrichment`` (075f362).

    ``__call__(features, train)``: list over scales (fine → coarse) of [B, H_i, W_i, C_i], each
    level exactly half the size of the previous one; returns the enriched maps, same shapes.
    """

    channels: Sequence[int]
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
        n = len(self.channels)
        kw = dict(dtype=self.dtype, impl=self.impl)
        for fine, coarse in itertools.pairwise(features):
            if fine.shape[1:3] != (2 * coarse.shape[1], 2 * coarse.shape[2]):
                # The original's top-down sum fails on such inputs too; its adaptive-pool branch
                # in the bottom-up pass is unreachable once the top-down pass succeeds.
                raise ValueError(
                    "pyramid levels must halve exactly, got "
                    f"{fine.shape[1:3]} → {coarse.shape[1:3]}"
                )
        # Top-down: coarse semantics into finer levels (1×1 channel align, then upsample).
        td = [features[-1]]
        for i in range(n - 2, -1, -1):
            higher = conv2d(self.channels[i], 1, **kw, name=f"td_convs_{i}_0")(td[0])
            td.insert(0, features[i] + upsample2x_bilinear(higher))
        # Bottom-up: fine detail into coarser levels (stride-2 grouped conv, groups = C_i).
        bu = [td[0]]
        for i in range(1, n):
            lower = conv2d(
                self.channels[i],
                3,
                stride=2,
                groups=self.channels[i - 1],
                **kw,
                name=f"bu_convs_{i - 1}",
            )(bu[-1])
            bu.append(td[i] + lower)
        out = []
        for i, (u, q) in enumerate(zip(bu, features)):
            c = self.channels[i]
            y = conv2d(c, 3, groups=c, **kw, name=f"fusions_{i}_0")(u)
            y = batch_norm(train, self.dtype, f"fusions_{i}_1")(y)
            out.append(nn.silu(y) + q)
        return out


class ShortLongConv(nn.Module):
    """Follows psalm_fusion.py ``ShortLongConvPreprocessor``: ``K_l(SiLU(K_s(x)))``, depthwise.

    [B, H, W, C] → [B, H, W, C].
    """

    short_kernel: int = 3
    long_kernel: int = 7
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(dtype=self.dtype, impl=self.impl)
        z = conv2d(c, self.short_kernel, groups=c, **kw, name="short_conv")(x)
        return conv2d(c, self.long_kernel, groups=c, **kw, name="long_conv")(nn.silu(z))


class SupportModulatedAttention(nn.Module):
    """Follows psalm_fusion.py ``SupportModulatedAttention`` (efficient/linear attention).

    ``__call__(x [B, H, W, C], support [B, C])`` → [B, H, W, C] (the attention branch only; the
    caller adds the residual). The softmaxes and the attention products run in float32.
    """

    key_channels: int
    value_channels: int
    head_count: int = 1
    use_conv_preprocessing: bool = True
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, support: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        heads = self.head_count
        if self.key_channels % heads or self.value_channels % heads:
            raise ValueError(f"key/value channels must be divisible by head_count={heads}")
        kw = dict(dtype=self.dtype)
        ck = dict(kw, impl=self.impl)  # modules with convolutions
        q_in, k_in = x, x
        if self.use_conv_preprocessing:
            q_in = ShortLongConv(**ck, name="q_preprocessor")(x)
            k_in = ShortLongConv(**ck, name="k_preprocessor")(x)
        f32 = jnp.float32
        # Channel index = head · d + j, as torch's reshape(B, heads, d, H·W) of NCHW gives.
        queries = conv2d(self.key_channels, 1, **ck, name="queries")(q_in)
        keys = conv2d(self.key_channels, 1, **ck, name="keys")(k_in)
        values = conv2d(self.value_channels, 1, **ck, name="values")(x)
        queries = queries.reshape(b, h * w, heads, -1).astype(f32)  # [B, N, heads, dk]
        keys = keys.reshape(b, h * w, heads, -1).astype(f32)
        values = values.reshape(b, h * w, heads, -1).astype(f32)  # [B, N, heads, dv]
        keys = jax.nn.softmax(keys, axis=1)  # over positions
        queries = jax.nn.softmax(queries, axis=-1)  # over the head's channels
        context = jnp.einsum("bnhk,bnhv->bhkv", keys, values)  # [B, heads, dk, dv]
        attended = jnp.einsum("bhkv,bnhk->bnhv", context, queries)  # [B, N, heads, dv]
        attended = attended.reshape(b, h, w, self.value_channels)
        # Support modulation: per-channel gates in [0, 1] from the scale's prototype.
        gate = nn.Dense(self.value_channels, **kw, name="support_modulator_0")(support)
        gate = nn.LayerNorm(
            epsilon=TORCH_LN_EPS, use_fast_variance=False, **kw, name="support_modulator_1"
        )(gate)
        gate = jax.nn.sigmoid(gate.astype(f32))[:, None, None, :]  # [B, 1, 1, Cv]
        modulated = (attended * gate).astype(self.dtype)
        return conv2d(c, 1, **ck, name="reprojection")(modulated)


class PSALMFusion(nn.Module):
    """Follows psalm_fusion.py ``PSALMFusion`` (075f362); see the module docstring.

    Attributes:
      query_channels: query (and prototype) widths, fine → coarse; RefDet: (32, 64, 128, 256).
      out_channels: output widths; RefDet: (128, 256, 512, 512).
      num_heads: attention heads per scale, capped at C // 16.
      use_pyramid, use_conv_preprocessing: the original's ablation switches (default on).
      dtype: compute dtype (parameters stay float32).
      impl: which code the convolutions trace to (jdet.models.impl).

    ``__call__(query, support, train=False)``:
      query: {"p2": [B, H, W, 32], "p3": [B, H/2, W/2, 64], ...} float, the last
        ``len(query_channels)`` of p2..p5, each level exactly half the previous one.
      support: {"p2": [B, 32], ...} float, one prototype per query image and scale (see
        `select_fusion_prototypes`), or None for the original's "standard" bypass.
    Returns {"p2": [B, H, W, 128], ...} in ``dtype``. Initialise with support given, so that
    the pyramid and attention parameters exist.
    """

    query_channels: Sequence[int] = (32, 64, 128, 256)
    out_channels: Sequence[int] = (128, 256, 512, 512)
    num_heads: int = 4
    use_pyramid: bool = True
    use_conv_preprocessing: bool = True
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @property
    def scales(self) -> tuple[str, ...]:
        return SCALE_NAMES[len(SCALE_NAMES) - len(self.query_channels) :]

    @nn.compact
    def __call__(
        self,
        query: Mapping[str, jax.Array],
        support: Mapping[str, jax.Array] | None = None,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        if len(self.out_channels) != len(self.query_channels):
            raise ValueError("query_channels and out_channels must have the same length")
        for s, c in zip(self.scales, self.query_channels):
            if s not in query or query[s].shape[-1] != c:
                got = None if s not in query else query[s].shape
                raise ValueError(f"query[{s!r}] must be [B, H, W, {c}], got {got}")
            if support is not None and (s not in support or support[s].shape[-1] != c):
                got = None if s not in support else support[s].shape
                raise ValueError(f"support[{s!r}] must be [B, {c}], got {got}")
        feats = [query[s].astype(self.dtype) for s in self.scales]
        kw = dict(dtype=self.dtype, impl=self.impl)

        if support is None:  # bypass: refinement + residual only
            attended = feats
        else:
            enriched = feats
            if self.use_pyramid:
                enriched = PyramidEnrichment(self.query_channels, **kw, name="pyramid")(
                    feats, train
                )
            attended = []
            for s, c, e in zip(self.scales, self.query_channels, enriched):
                attention = SupportModulatedAttention(
                    key_channels=c // 2,
                    value_channels=c // 2,
                    head_count=self._heads(c),
                    use_conv_preprocessing=self.use_conv_preprocessing,
                    **kw,
                    name=f"attentions_{s}",
                )
                attended.append(attention(e, support[s].astype(self.dtype)) + e)

        out = {}
        for s, c, c_out, a, q in zip(
            self.scales, self.query_channels, self.out_channels, attended, feats
        ):
            # Sequential(dwconv3×3, BN, SiLU, conv1×1, BN, SiLU): torch indices 0, 1, 3, 4.
            y = conv2d(c, 3, groups=c, **kw, name=f"refinement_projectors_{s}_0")(a)
            y = nn.silu(batch_norm(train, self.dtype, f"refinement_projectors_{s}_1")(y))
            y = conv2d(c_out, 1, **kw, name=f"refinement_projectors_{s}_3")(y)
            y = nn.silu(batch_norm(train, self.dtype, f"refinement_projectors_{s}_4")(y))
            residual = (
                q if c == c_out else conv2d(c_out, 1, **kw, name=f"residual_projectors_{s}")(q)
            )
            out[s] = y + residual
        return out

    def _heads(self, channels: int) -> int:
        heads = min(self.num_heads, channels // 16)
        if heads < 1:
            raise ValueError(f"PSALM attention needs ≥ 16 query channels per scale, got {channels}")
        return heads


def select_fusion_prototypes(
    prototypes: Mapping[str, jax.Array],
    support_mask: jax.Array,
    query_way: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """One fusion prototype per query image and scale from N-way episode prototypes.

    Args:
      prototypes: {scale: [B, N, D_s] float}, L2-normalised per way (padded ways: any value).
      support_mask: [B, N] bool, True for real ways.
      query_way: [B] int32 or None. The way each query image belongs to (the original's
        ``class_ids``): that way's prototype is used, as in the original's training.
        None: the mean of the valid ways, re-normalised (the original's K-shot averaging; it is
        the gathered prototype when N = 1, as at inference).
    Returns {scale: [B, D_s]} in the prototypes' dtype.
    """
    out = {}
    for s, p in prototypes.items():
        if query_way is not None:
            out[s] = jnp.take_along_axis(p, query_way[:, None, None].astype(jnp.int32), axis=1)[
                :, 0
            ]
        else:
            valid = support_mask[..., None]
            total = jnp.sum(jnp.where(valid, p, 0), axis=1)  # where, not ×: padding may be NaN
            count = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(p.dtype)
            out[s] = l2_normalize(total / count, keep_dtype=True)
    return out
