"""The ViT variants jdet builds (DINOv2 / DINOv3 sizes and the tiny test variants):
`ViTConfig`, `VARIANTS`, `resolve_variant`.

NumPy-free and jax-free, so the torch-side fixture generators (tests/fixtures/generate/, run in
the `convert` environment) can import `VARIANTS` and build the matching Hugging Face configs
with `ViTConfig.hf_config()`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of one ViT variant, in the Hugging Face config's terms.

    `position_grid` (DINOv2 only) is the side of the stored learned position grid: 37 for the
    Hub checkpoints (image_size 518 / patch 14). DINOv3 uses RoPE (`rope_theta`) instead and
    `num_register_tokens` extra tokens after CLS. The MLP is a plain GELU MLP in both families
    (the SwiGLU variants of the giant models are not supported).
    """

    family: Literal["dinov2", "dinov3"]
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    layer_norm_eps: float
    num_register_tokens: int = 0
    position_grid: int = 0
    rope_theta: float = 100.0
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in ("dinov2", "dinov3"):
            raise ValueError(f"family must be 'dinov2' or 'dinov3', got {self.family!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.family == "dinov3" and (self.hidden_size // self.num_heads) % 4:
            raise ValueError("DINOv3 2-D RoPE needs head_dim = hidden_size/num_heads % 4 == 0")
        if self.family == "dinov2" and (self.position_grid < 1 or self.num_register_tokens):
            raise ValueError("DINOv2 needs position_grid >= 1 and has no register tokens")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def hf_config(self) -> dict[str, Any]:
        """Keyword arguments for transformers' `Dinov2Config` / `DINOv3ViTConfig` (5.x)."""
        common = dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            patch_size=self.patch_size,
            layer_norm_eps=self.layer_norm_eps,
            layerscale_value=self.layerscale_value,
            hidden_act="gelu",
        )
        if self.family == "dinov2":
            if self.intermediate_size % self.hidden_size:
                raise ValueError("Dinov2Config needs intermediate_size = mlp_ratio * hidden_size")
            if not all((self.query_bias, self.key_bias, self.value_bias, self.proj_bias,
                        self.mlp_bias)):  # fmt: skip
                raise ValueError("Dinov2Model has biases on q/k/v/o and the MLP")
            return dict(
                common,
                image_size=self.position_grid * self.patch_size,
                mlp_ratio=self.intermediate_size // self.hidden_size,
                qkv_bias=True,
                use_swiglu_ffn=False,
            )
        return dict(
            common,
            intermediate_size=self.intermediate_size,
            num_register_tokens=self.num_register_tokens,
            rope_theta=self.rope_theta,
            query_bias=self.query_bias,
            key_bias=self.key_bias,
            value_bias=self.value_bias,
            proj_bias=self.proj_bias,
            mlp_bias=self.mlp_bias,
            use_gated_mlp=False,
        )


_DINOV3_S = ViTConfig(
    # facebook/dinov3-vits16-pretrain-lvd1689m config.json (DINOv3ViTConfig defaults + 4 regs)
    family="dinov3", hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536,
    patch_size=16, layer_norm_eps=1e-5, num_register_tokens=4, rope_theta=100.0, key_bias=False,
)  # fmt: skip
_DINOV2_S = ViTConfig(
    # facebook/dinov2-small config.json: image_size 518 → 37×37 stored positions
    family="dinov2", hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536,
    patch_size=14, layer_norm_eps=1e-6, position_grid=37,
)  # fmt: skip

_TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128, patch_size=4)
VARIANTS: dict[str, ViTConfig] = {
    "dinov3-S/16": _DINOV3_S,
    "dinov2-S/14": _DINOV2_S,
    # Test variants: parity fixtures (tests/fixtures/dinov*_tiny.safetensors) are built from these.
    "dinov3-tiny": dataclasses.replace(_DINOV3_S, **_TINY),
    "dinov2-tiny": dataclasses.replace(_DINOV2_S, **_TINY, position_grid=8),  # HF image_size 32
}


def resolve_variant(variant: str | ViTConfig) -> ViTConfig:
    """The `ViTConfig` of a variant name (or the config itself)."""
    if isinstance(variant, ViTConfig):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


# ---------------------------------------------------------------------------------------------
# Hugging Face names → canonical (Hub) names
# ---------------------------------------------------------------------------------------------
