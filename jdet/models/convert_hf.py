"""Hugging Face DINOv2 / DINOv3 weights → params of `jdet.models.vit.ViT`.

This module needs only NumPy and `safetensors` (no jax, no torch); the variant table is
`jdet.models.vit_variants`.

Names accepted (every one is checked; unknown or missing tensors raise a `ValueError` listing
them by name, shapes are checked against the variant):

* `Dinov2Model` (transformers 5.24): checkpoints on the Hub and `save_pretrained` use
  ``embeddings.{cls_token,mask_token,position_embeddings,patch_embeddings.projection.*}``,
  ``encoder.layer.{i}.{norm1,attention.attention.{query,key,value},attention.output.dense,
  layer_scale1.lambda1,norm2,mlp.fc1,mlp.fc2,layer_scale2.lambda1}.*``, ``layernorm.*``;
  the in-memory 5.x names ``attention.{q,k,v,o}_proj`` are accepted as well.
* `DINOv3ViTModel`: ``embeddings.{cls_token,mask_token,register_tokens,patch_embeddings.*}``,
  ``layer.{i}.{norm1,attention.{q,k,v,o}_proj,layer_scale1.lambda1,norm2,mlp.{up,down}_proj,
  layer_scale2.lambda1}.*``, ``norm.*``; the in-memory 5.x name ``model.layer.{i}`` as well.
* A leading ``dinov2.`` / ``dinov3.`` / ``model.`` / ``backbone.`` (the base-model prefix of the
  task heads) is stripped. Task-head tensors (e.g. ``classifier.*``) are unknown: filter them out.

Layout changes: Linear weights [out, in] → Dense kernels [in, out]; Conv2d weights
[D, 3, p, p] (OIHW) → Conv kernels [p, p, 3, D] (HWIO); LayerNorm weight → scale; DINOv2's
``mask_token`` [1, D] → [1, 1, D] (jdet stores both families' token tensors as [1, n, D]).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import safetensors.numpy

from jdet.models.vit_variants import VARIANTS, ViTConfig, resolve_variant

_PREFIXES = ("dinov2.", "dinov3.", "model.", "backbone.")
_ROOTS = {
    "dinov2": ("embeddings.", "encoder.layer.", "layernorm."),
    "dinov3": ("embeddings.", "layer.", "norm."),
}
# transformers 5.x in-memory Dinov2 names → the names its checkpoints (and the Hub) use.
_DINOV2_RENAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def _canonical_name(name: str, family: str) -> str:
    """Strip base-model prefixes (``model.layer.3`` → ``layer.3``) and undo 5.x renames."""
    roots = _ROOTS[family]
    while not name.startswith(roots) and name.startswith(_PREFIXES):
        name = name.split(".", 1)[1]
    if family == "dinov2":
        for new, old in _DINOV2_RENAMES:
            name = name.replace(new, old)
    return name


def _canonicalize(state_dict: Mapping[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    canonical: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for name, array in state_dict.items():
        key = _canonical_name(name, family)
        if key in canonical:
            raise ValueError(f"tensors {source[key]!r} and {name!r} both map to {key!r}")
        canonical[key], source[key] = np.asarray(array), name
    return canonical


# ---------------------------------------------------------------------------------------------
# Expected tensors of a variant
# ---------------------------------------------------------------------------------------------

# How an HF array becomes the jdet array (see _to_jdet).
_Kind = Literal["copy", "linear", "conv", "tokens"]


def _hf_layout(cfg: ViTConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], _Kind]]:
    """HF (Hub) tensor name → (jdet param path, HF shape, layout kind) for every tensor."""
    d, f, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    v2 = cfg.family == "dinov2"
    out: dict[str, tuple[tuple[str, ...], tuple[int, ...], _Kind]] = {}

    def linear(hf: str, path: tuple[str, ...], n_in: int, n_out: int, bias: bool) -> None:
        out[f"{hf}.weight"] = (path + ("kernel",), (n_out, n_in), "linear")
        if bias:
            out[f"{hf}.bias"] = (path + ("bias",), (n_out,), "copy")

    def norm(hf: str, path: tuple[str, ...]) -> None:
        out[f"{hf}.weight"] = (path + ("scale",), (d,), "copy")
        out[f"{hf}.bias"] = (path + ("bias",), (d,), "copy")

    emb = ("embeddings",)
    out["embeddings.cls_token"] = (emb + ("cls_token",), (1, 1, d), "copy")
    out["embeddings.mask_token"] = (emb + ("mask_token",), (1, d) if v2 else (1, 1, d), "tokens")
    patch_hf = "embeddings.patch_embeddings" + (".projection" if v2 else "")
    out[f"{patch_hf}.weight"] = (emb + ("patch_embeddings", "kernel"), (d, 3, p, p), "conv")
    out[f"{patch_hf}.bias"] = (emb + ("patch_embeddings", "bias"), (d,), "copy")
    if v2:
        shape = (1, cfg.position_grid**2 + 1, d)
        out["embeddings.position_embeddings"] = (emb + ("position_embeddings",), shape, "copy")
    elif cfg.num_register_tokens:
        shape = (1, cfg.num_register_tokens, d)
        out["embeddings.register_tokens"] = (emb + ("register_tokens",), shape, "copy")

    for i in range(cfg.num_layers):
        hf, path = (f"encoder.layer.{i}" if v2 else f"layer.{i}"), (f"layer_{i}",)
        att = path + ("attention",)
        norm(f"{hf}.norm1", path + ("norm1",))
        norm(f"{hf}.norm2", path + ("norm2",))
        qkv_hf = f"{hf}.attention.attention." if v2 else f"{hf}.attention."
        names = ("query", "key", "value") if v2 else ("q_proj", "k_proj", "v_proj")
        biases = (cfg.query_bias, cfg.key_bias, cfg.value_bias)
        for hf_name, jd_name, bias in zip(
            names, ("q_proj", "k_proj", "v_proj"), biases, strict=True
        ):
            linear(qkv_hf + hf_name, att + (jd_name,), d, d, bias)
        o_hf = f"{hf}.attention.output.dense" if v2 else f"{hf}.attention.o_proj"
        linear(o_hf, att + ("o_proj",), d, d, cfg.proj_bias)
        fc1, fc2 = ("fc1", "fc2") if v2 else ("up_proj", "down_proj")
        linear(f"{hf}.mlp.{fc1}", path + ("mlp", fc1), d, f, cfg.mlp_bias)
        linear(f"{hf}.mlp.{fc2}", path + ("mlp", fc2), f, d, cfg.mlp_bias)
        for ls in ("layer_scale1", "layer_scale2"):
            out[f"{hf}.{ls}.lambda1"] = (path + (ls, "lambda1"), (d,), "copy")
    norm("layernorm" if v2 else "norm", ("layernorm" if v2 else "norm",))
    return out


def _to_jdet(array: np.ndarray, kind: _Kind) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if kind == "linear":  # torch Linear [out, in] → flax Dense [in, out]
        return np.ascontiguousarray(array.T)
    if kind == "conv":  # OIHW → HWIO
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if kind == "tokens":  # DINOv2 mask_token [1, D] → [1, 1, D]
        return array.reshape(1, -1, array.shape[-1])
    return array


# ---------------------------------------------------------------------------------------------
# Variant inference and conversion
# ---------------------------------------------------------------------------------------------


def infer_variant(state_dict: Mapping[str, np.ndarray], family: str) -> str:
    """The registered variant whose dims match the tensors (heads cannot be read off weights).

    Raises `ValueError` when no registered variant, or more than one, matches.
    """
    sd = _canonicalize(state_dict, family)
    v2 = family == "dinov2"
    patch = "embeddings.patch_embeddings" + (".projection" if v2 else "") + ".weight"
    fc1 = "encoder.layer.0.mlp.fc1.weight" if v2 else "layer.0.mlp.up_proj.weight"
    layer_re = re.compile(r"^(?:encoder\.)?layer\.(\d+)\.")
    try:
        found = dict(
            hidden_size=int(sd["embeddings.cls_token"].shape[-1]),
            num_layers=1 + max(int(m[1]) for k in sd if (m := layer_re.match(k))),
            patch_size=int(sd[patch].shape[-1]),
            intermediate_size=int(sd[fc1].shape[0]),
        )
        if v2:
            n_pos = sd["embeddings.position_embeddings"].shape[1] - 1
            found["position_grid"] = round(n_pos**0.5)
        else:
            reg = sd.get("embeddings.register_tokens")
            found["num_register_tokens"] = 0 if reg is None else int(reg.shape[1])
    except (KeyError, ValueError) as err:  # ValueError: max() of no layers
        raise ValueError(
            f"cannot infer the {family} variant ({err!r} missing); pass variant=..."
        ) from None
    matches = [
        name
        for name, cfg in VARIANTS.items()
        if cfg.family == family and all(getattr(cfg, k) == v for k, v in found.items())
    ]
    if len(matches) != 1:
        raise ValueError(
            f"tensors look like {family} with {found}; registered variants matching: {matches} "
            "(need exactly one); pass variant=... explicitly"
        )
    return matches[0]


def _convert(state_dict: Mapping[str, np.ndarray], family: str, variant: str | ViTConfig | None):
    if variant is None:
        variant = infer_variant(state_dict, family)
    cfg = resolve_variant(variant)
    if cfg.family != family:
        raise ValueError(f"variant {variant!r} is {cfg.family}, but these are {family} weights")
    sd = _canonicalize(state_dict, family)
    layout = _hf_layout(cfg)
    missing = sorted(set(layout) - set(sd))
    unknown = sorted(set(sd) - set(layout))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown tensors ({len(unknown)}): {', '.join(unknown)}")
    for name in sorted(set(layout) & set(sd)):
        if tuple(sd[name].shape) != layout[name][1]:
            problems.append(
                f"{name}: shape {tuple(sd[name].shape)}, expected {layout[name][1]} for {variant!r}"
            )
    if problems:
        raise ValueError(
            f"{family} weights do not fit variant {variant!r}:\n" + "\n".join(problems)
        )

    params: dict[str, Any] = {}
    for name, (path, _, kind) in layout.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _to_jdet(sd[name], kind)
    return params


def dinov2_from_state_dict(
    state_dict: Mapping[str, np.ndarray], variant: str | ViTConfig | None = None
) -> dict[str, Any]:
    """`Dinov2Model` tensors (name → array) → `ViT(variant)` params (nested dict, float32 numpy).

    `variant=None` picks the registered DINOv2 variant matching the tensor shapes.
    """
    return _convert(state_dict, "dinov2", variant)


def dinov3_from_state_dict(
    state_dict: Mapping[str, np.ndarray], variant: str | ViTConfig | None = None
) -> dict[str, Any]:
    """`DINOv3ViTModel` tensors (name → array) → `ViT(variant)` params (float32 numpy)."""
    return _convert(state_dict, "dinov3", variant)


_FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file (or of ``<dir>/model.safetensors``) as NumPy.

    bfloat16 tensors (NumPy has no bf16) are widened to float32 from their raw bits.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    try:
        return dict(safetensors.numpy.load_file(str(path)))
    except (KeyError, TypeError, ValueError):
        pass  # a dtype NumPy lacks (BF16): read the file layout ourselves
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _FLOAT_DTYPES:
            array = np.frombuffer(data[begin:end], dtype=_FLOAT_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        out[name] = array.reshape(info["shape"])
    return out


def dinov2_from_safetensors(
    path: str | pathlib.Path, variant: str | ViTConfig | None = None
) -> dict[str, Any]:
    """Hugging Face `Dinov2Model` ``model.safetensors`` (file or folder) → `ViT` params."""
    return dinov2_from_state_dict(load_safetensors(path), variant)


def dinov3_from_safetensors(
    path: str | pathlib.Path, variant: str | ViTConfig | None = None
) -> dict[str, Any]:
    """Hugging Face `DINOv3ViTModel` ``model.safetensors`` (file or folder) → `ViT` params."""
    return dinov3_from_state_dict(load_safetensors(path), variant)
