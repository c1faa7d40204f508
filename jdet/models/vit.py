"""DINOv2 / DINOv3 vision transformers (the RefDet support encoder) in Flax linen, NHWC.

Ports the inference forward of transformers 5.24 (docs/original.md §2, docs/design.md §6):

* ``"dinov3-S/16"`` follows `DINOv3ViTModel` (models/dinov3_vit/modeling_dinov3_vit.py): patch
  embedding, [CLS, 4 registers, patches], 12 pre-norm blocks whose attention applies 2-D axial
  RoPE to the patch tokens only (`DINOv3ViTRopePositionEmbedding`: patch centres normalised to
  [-1, 1] per axis, period base `rope_theta` = 100), LayerScale, GELU MLP, final LayerNorm.
* ``"dinov2-S/14"`` follows `Dinov2Model` (models/dinov2/modeling_dinov2.py): [CLS, patches] +
  learned position embeddings stored for a 37×37 grid (518²) and bicubically resized to the
  input grid exactly as `Dinov2Embeddings.interpolate_pos_encoding` does (torch `interpolate(
  size=grid, mode="bicubic", align_corners=False)`, no antialias, float32).
* ``"dinov3-tiny"`` / ``"dinov2-tiny"``: test variants. The variant table (`ViTConfig`,
  `VARIANTS`) lives in the jax-free `jdet.models.convert_hf` so that the torch-side fixture
  script can build the matching HF configs; it is re-exported here.

Module and parameter names follow Hugging Face's (``embeddings``, ``layer_{i}``, ``norm1``,
``attention/{q,k,v,o}_proj``, ``layer_scale1/lambda1``, ``mlp/fc1`` or ``mlp/up_proj``, ...), so
`jdet.models.convert_hf` is a renaming plus transposes.

Deviations from Hugging Face, all inert for pretrained inference:
- DINOv3's training-time RoPE coordinate augmentation (`pos_embed_rescale` = 2 in the Hub
  config; shift/jitter are off there) is not implemented: coordinates are always the plain
  patch centres, i.e. HF's eval mode. The original trainer used timm's DINOv3, which does not
  apply it either. Dropout and drop-path (0 in the Hub configs) are absent too.
- ``mask_token`` (masked-image pretraining only) is kept as a parameter for a lossless
  conversion and an exact parameter count, but never used; `vit_param_labels` freezes it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdet.models.vit_variants import VARIANTS, ViTConfig, resolve_variant

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "ViT",
    "ViTConfig",
    "bicubic_resize_matrix",
    "imagenet_normalize",
    "interpolate_pos_encoding",
    "rope_cos_sin",
    "vit_frozen_patterns",
    "vit_param_labels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_init = nn.initializers.truncated_normal(stddev=0.02)  # HF _init_weights: initializer_range


def imagenet_normalize(images_01: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] → (x − mean) / std with ImageNet statistics (both DINO families)."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (jnp.asarray(images_01, jnp.float32) - mean) / std


# ---------------------------------------------------------------------------------------------
# Position encodings (static shapes: computed in NumPy at trace time)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] f32 matrix M with ``M @ x`` = torch's 1-D bicubic resize of x.

    Follows aten upsample_bicubic2d with align_corners=False and an explicit output size: source
    coordinate ``(dst + 0.5)·in/out − 0.5`` (not clamped), Keys cubic kernel with A = −0.75,
    four taps whose indices are clamped to the border. The 2-D resize is separable.
    """
    a = np.float32(-0.75)
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    left = np.floor(src)
    t = src - left

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)  # [out, 4]
    taps = np.clip(left[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size)[:, None], taps), weights)
    matrix.setflags(write=False)  # cached: shared between callers
    return matrix


def interpolate_pos_encoding(pos: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
    """[1, 1 + G², D] stored DINOv2 position embeddings → [1, 1 + grid_h·grid_w, D] (float32).

    Follows `Dinov2Embeddings.interpolate_pos_encoding`: the CLS entry is kept, the G×G patch
    grid is bicubically resized in float32 (identity when the grid already matches).
    """
    side = round((pos.shape[1] - 1) ** 0.5)
    cls_pos, grid = pos[:, :1], pos[0, 1:].astype(jnp.float32).reshape(side, side, -1)
    if (grid_h, grid_w) != (side, side):
        rows = jnp.asarray(bicubic_resize_matrix(side, grid_h))  # [grid_h, G]
        cols = jnp.asarray(bicubic_resize_matrix(side, grid_w))  # [grid_w, G]
        grid = jnp.einsum("hi,wj,ijd->hwd", rows, cols, grid, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([cls_pos.astype(jnp.float32), grid.reshape(1, grid_h * grid_w, -1)], 1)


@functools.lru_cache(maxsize=64)
def rope_cos_sin(head_dim: int, theta: float, grid_h: int, grid_w: int) -> tuple[np.ndarray, ...]:
    """DINOv3 axial RoPE tables: (cos, sin), each [grid_h·grid_w, head_dim] f32.

    Follows `DINOv3ViTRopePositionEmbedding.forward` in eval mode: patch centres
    ``(i + 0.5)/n`` mapped to [-1, 1] per axis (row-major (y, x) order), ``head_dim/4``
    frequencies ``theta^(-4k/head_dim)``, angles ``2π·coord·freq`` laid out [y freqs, x freqs]
    and tiled twice to match `rotate_half`'s pairing of dims i and i + head_dim/2.
    """
    inv_freq = 1.0 / np.float32(theta) ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)
    ys = np.arange(0.5, grid_h, dtype=np.float32) / np.float32(grid_h)
    xs = np.arange(0.5, grid_w, dtype=np.float32) / np.float32(grid_w)
    coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2) * 2 - 1  # [N, 2]
    angles = np.float32(2 * np.pi) * coords[:, :, None] * inv_freq[None, None, :]  # [N, 2, hd/4]
    angles = np.tile(angles.reshape(len(coords), -1), 2)  # [N, head_dim]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cos.setflags(write=False)  # cached: shared between callers
    sin.setflags(write=False)
    return cos, sin


def _rotate_half(x: jax.Array) -> jax.Array:
    first, second = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-second, first], axis=-1)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the last N tokens of x [B, T, H, hd] (patches); prefix tokens pass unchanged.

    Follows `apply_rotary_pos_emb` of modeling_dinov3_vit.py. cos, sin: [N, hd].
    """
    n_prefix = x.shape[1] - cos.shape[0]
    prefix, patches = x[:, :n_prefix], x[:, n_prefix:]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    patches = patches * cos + _rotate_half(patches) * sin
    return jnp.concatenate([prefix, patches], axis=1)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    """images [B, H, W, 3] → tokens [B, 1 + R + h·w, D] (h = H // patch, w = W // patch).

    Follows `DINOv3ViTEmbeddings` (CLS, registers, patches) / `Dinov2Embeddings` (CLS, patches,
    + interpolated position embeddings). Trailing pixels beyond a multiple of the patch size are
    dropped, as torch's strided Conv2d does.
    """

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg, d, p = self.config, self.config.hidden_size, self.config.patch_size
        patch_embed = nn.Conv(
            d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, kernel_init=_init,
            name="patch_embeddings",
        )  # fmt: skip
        patches = patch_embed(images.astype(self.dtype))  # [B, h, w, D]
        batch, grid_h, grid_w, _ = patches.shape
        patches = patches.reshape(batch, grid_h * grid_w, d)

        cls_token = self.param("cls_token", _init, (1, 1, d))
        self.param("mask_token", nn.initializers.zeros, (1, 1, d))  # unused, see module docstring
        prefix = [cls_token]
        if cfg.num_register_tokens:
            prefix.append(self.param("register_tokens", _init, (1, cfg.num_register_tokens, d)))
        prefix = jnp.concatenate(prefix, axis=1).astype(self.dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(prefix, (batch, *prefix.shape[1:])), patches], 1)
        if cfg.family == "dinov2":
            n_pos = cfg.position_grid**2 + 1
            pos = self.param("position_embeddings", _init, (1, n_pos, d))
            tokens = tokens + interpolate_pos_encoding(pos, grid_h, grid_w).astype(self.dtype)
        return tokens


class Attention(nn.Module):
    """Multi-head self-attention, x [B, T, D] → [B, T, D]; RoPE on patch tokens when given.

    Follows `DINOv3ViTAttention` / `Dinov2Attention` (eager path): softmax(q·kᵀ/√hd)·v, the
    softmax computed in float32 whatever the compute dtype.
    """

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        cfg = self.config
        batch, tokens, d = x.shape
        dense = functools.partial(nn.Dense, d, dtype=self.dtype, kernel_init=_init)
        split = (batch, tokens, cfg.num_heads, cfg.head_dim)
        q = dense(use_bias=cfg.query_bias, name="q_proj")(x).reshape(split)  # [B, T, H, hd]
        k = dense(use_bias=cfg.key_bias, name="k_proj")(x).reshape(split)
        v = dense(use_bias=cfg.value_bias, name="v_proj")(x).reshape(split)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * cfg.head_dim**-0.5  # [B, H, T, T]
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, d)
        return dense(use_bias=cfg.proj_bias, name="o_proj")(out)


class LayerScale(nn.Module):
    """x · lambda1 (per channel), `DINOv3ViTLayerScale` / `Dinov2LayerScale`."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.constant(self.config.layerscale_value)
        return x * self.param("lambda1", init, (self.config.hidden_size,)).astype(x.dtype)


class MLP(nn.Module):
    """Linear → exact GELU → Linear, x [B, T, D] → [B, T, D].

    Names follow `Dinov2MLP` (fc1/fc2, always biased) and `DINOv3ViTMLP` (up_proj/down_proj).
    """

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        up, down = ("fc1", "fc2") if cfg.family == "dinov2" else ("up_proj", "down_proj")
        dense = functools.partial(
            nn.Dense, use_bias=cfg.mlp_bias, dtype=self.dtype, kernel_init=_init
        )
        x = dense(cfg.intermediate_size, name=up)(x)
        x = nn.gelu(x, approximate=False)  # HF "gelu" = exact erf GELU (flax defaults to tanh)
        return dense(cfg.hidden_size, name=down)(x)


class Block(nn.Module):
    """Pre-norm transformer block, `DINOv3ViTLayer` / `Dinov2Layer`: x [B, T, D] → [B, T, D]."""

    config: ViTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        cfg = self.config
        norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=self.dtype)
        h = Attention(cfg, self.dtype, name="attention")(norm(name="norm1")(x), rope)
        x = x + LayerScale(cfg, name="layer_scale1")(h)
        h = MLP(cfg, self.dtype, name="mlp")(norm(name="norm2")(x))
        return x + LayerScale(cfg, name="layer_scale2")(h)


class ViT(nn.Module):
    """DINOv2 / DINOv3 ViT: images [B, H, W, 3] f32 (ImageNet-normalised) → token features.

    Returns a dict: ``cls`` [B, D], ``registers`` [B, R, D] (R = 0 for DINOv2) and ``patch``
    [B, h·w, D] with h = H // patch, w = W // patch in row-major order (reshape to
    [B, h, w, D]); all after the final LayerNorm, i.e. `last_hidden_state` split by token kind.

    Attributes:
      variant: a name in `VARIANTS` ("dinov3-S/16", "dinov2-S/14", "dinov3-tiny",
        "dinov2-tiny") or a `ViTConfig`.
      dtype: compute dtype (e.g. jnp.bfloat16 on GPU); params stay float32. Softmax, LayerNorm
        statistics and the DINOv2 position-embedding resize run in float32.
      frozen_blocks: k > 0 puts `jax.lax.stop_gradient` on the output of block k − 1, so the
        embeddings (patch conv, CLS, registers, positions) and blocks 0..k−1 get exactly zero
        gradient (the original froze the patch embedding + 6 blocks). Pair it with
        `vit_param_labels(params, k)` so the optimiser does not weight-decay them either.
        Unlike the original (which set requires_grad=False on those tensors but let gradients
        flow through the frozen blocks), the register tokens are frozen too, and no backward
        pass runs through the frozen blocks.
    """

    variant: str | ViTConfig = "dinov3-S/16"
    dtype: Any = jnp.float32
    frozen_blocks: int = 0

    @property
    def config(self) -> ViTConfig:
        return resolve_variant(self.variant)

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        grid_h, grid_w = images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"images {images.shape[1:3]} smaller than patch {cfg.patch_size}")
        if not 0 <= self.frozen_blocks <= cfg.num_layers:
            raise ValueError(
                f"frozen_blocks must be in [0, {cfg.num_layers}]: {self.frozen_blocks}"
            )

        x = Embeddings(cfg, self.dtype, name="embeddings")(images)  # [B, T, D]
        rope = None
        if cfg.family == "dinov3":
            cos, sin = rope_cos_sin(cfg.head_dim, cfg.rope_theta, grid_h, grid_w)
            # HF casts the tables to the compute dtype (`cos.to(dtype=pixel_values.dtype)`).
            rope = (jnp.asarray(cos, self.dtype), jnp.asarray(sin, self.dtype))
        for i in range(cfg.num_layers):
            x = Block(cfg, self.dtype, name=f"layer_{i}")(x, rope)
            if i + 1 == self.frozen_blocks:
                x = jax.lax.stop_gradient(x)
        final_norm = "layernorm" if cfg.family == "dinov2" else "norm"
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name=final_norm)(x)
        n_prefix = 1 + cfg.num_register_tokens
        return {"cls": x[:, 0], "registers": x[:, 1:n_prefix], "patch": x[:, n_prefix:]}


# ---------------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------------


def vit_frozen_patterns(frozen_blocks: int, prefix: str = "") -> tuple[str, ...]:
    """Regexes over "/"-joined param paths (e.g. ``layer_3/attention/q_proj/kernel``) that
    match the parameters `ViT(frozen_blocks=k)` never updates.

    `prefix` is the ViT's own path inside a bigger model (e.g. ``"support_encoder/"``). The
    unused ``mask_token`` is always matched; k > 0 adds all of ``embeddings`` (patch conv, CLS,
    registers, positions: they sit before the stop_gradient) and ``layer_0`` .. ``layer_{k-1}``.
    """
    if frozen_blocks < 0:
        raise ValueError(f"frozen_blocks must be >= 0, got {frozen_blocks}")
    patterns = [rf"^{prefix}embeddings/mask_token$"]
    if frozen_blocks:
        blocks = "|".join(str(i) for i in range(frozen_blocks))
        patterns += [rf"^{prefix}embeddings/", rf"^{prefix}layer_(?:{blocks})/"]
    return tuple(patterns)


def vit_param_labels(params: dict[str, Any], frozen_blocks: int) -> dict[str, Any]:
    """Pytree like `params` (a ViT's params) with leaves "frozen" / "trainable".

    For `optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()}, labels)`:
    frozen leaves then never move, weight decay included.
    """
    depth = sum(1 for name in params if name.startswith("layer_"))
    if frozen_blocks > depth:
        raise ValueError(f"frozen_blocks={frozen_blocks} but the params have {depth} blocks")
    compiled = [re.compile(p) for p in vit_frozen_patterns(frozen_blocks)]

    def label(path, _leaf) -> str:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return "frozen" if any(p.search(name) for p in compiled) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)
