"""The original RefDet's torch state dicts → jdet Flax variables (fusion, heads, projections).

The original is it-dainb/zalo_ai_2025 at 075f362: ``PSALMFusion`` (``psalm_fusion.py``),
``DualDetectionHead`` (``dual_head.py``) and the projections of ``DINOSupportEncoder``
(``dino_encoder.py``). In a full ``YOLOv8nRefDet`` checkpoint these sit under the prefixes
``scs_fusion.``, ``detection_head.`` and ``support_encoder.``; pass the prefix and only the keys
under it are read (the rest of the checkpoint is ignored).

The jdet modules name their submodules after the torch ones, so conversion is a renaming:
container indices joined by ``_`` (``attentions.p2`` ↔ ``attentions_p2``,
``cv2.0.1.bn`` ↔ ``cv2_0/1/bn``), leaves renamed (``weight`` → ``kernel`` or ``scale``,
``running_mean/var`` → ``batch_stats`` ``mean/var``), conv kernels OIHW → HWIO and linear
weights [out, in] → [in, out]. The expected tree comes from ``jax.eval_shape`` of the jdet
module, so every tensor's shape is checked. State dicts map names to NumPy arrays
(``{k: v.numpy() for k, v in module.state_dict().items()}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdet.models.fusion import PSALMFusion
from jdet.models.heads import DualDetectionHead, PrototypeProjections, TripletProjection

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "temperature"): "temperature",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _module_key(path: Sequence[str]) -> str:
    """Flax module path → torch prefix: ``_<index>`` / ``_p<k>`` suffixes become ``.<index>``."""
    return ".".join(re.sub(r"_(\d+|p[2-5])(?=_|$)", r".\1", part) for part in path)


def _projection_key(path: Sequence[str]) -> str:
    """``proj_p2_0`` → ``proj_p2.0``, ``triplet_proj_1`` → ``triplet_proj.1``."""
    return ".".join(re.sub(r"_(\d+)$", r".\1", part) for part in path)


def _to_flax(name: str, value: np.ndarray, leaf: str) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if leaf == "kernel" and value.ndim == 4:  # Conv2d OIHW → HWIO
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:  # Linear [out, in] → Dense [in, out]
        return value.T
    return value


def _convert(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping,
    module_key: Callable[[Sequence[str]], str],
    prefix: str,
    ignored: Callable[[str], bool],
) -> dict:
    """Fill ``expected`` (a tree of ShapeDtypeStruct) from ``state_dict``; strict both ways."""
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    used, missing, bad_shape = set(), [], []

    def fill(path, spec):
        names = [p.key for p in path]
        collection, *modules, leaf = names
        key = ".".join(filter(None, [module_key(modules), _LEAF_TO_TORCH[(collection, leaf)]]))
        if key not in sd:
            missing.append(prefix + key)
            return jnp.zeros(spec.shape, spec.dtype)
        used.add(key)
        value = _to_flax(key, sd[key], leaf)
        if value.shape != tuple(spec.shape):
            bad_shape.append(f"{prefix + key}: {value.shape} (as flax) != {tuple(spec.shape)}")
            return jnp.zeros(spec.shape, spec.dtype)
        return jnp.asarray(value, spec.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, dict(expected))
    unexpected = sorted(prefix + k for k in sd if k not in used and not ignored(k))
    if missing or unexpected or bad_shape:
        raise ValueError(
            "state dict does not match the jdet module: "
            f"missing {sorted(missing)}; unexpected {unexpected}; wrong shape {bad_shape}"
        )
    return variables


def _ignore_bn_counters(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _expected(module: nn.Module, *args) -> dict:
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}


def _dummy_pyramid(channels: Sequence[int], batch: int = 1) -> list[jax.ShapeDtypeStruct]:
    n = len(channels)
    return [
        jax.ShapeDtypeStruct((batch, 2 ** (n - i), 2 ** (n - i), c), jnp.float32)
        for i, c in enumerate(channels)
    ]


def fusion_from_torch(
    state_dict: Mapping[str, np.ndarray],
    *,
    query_channels: Sequence[int] = (32, 64, 128, 256),
    out_channels: Sequence[int] = (128, 256, 512, 512),
    num_heads: int = 4,
    prefix: str = "",
) -> dict:
    """``PSALMFusion`` state dict → {"params", "batch_stats"} of `jdet.models.fusion.PSALMFusion`.

    Raises ValueError naming every missing, unexpected or wrongly shaped tensor
    (``num_batches_tracked`` counters are ignored).
    """
    module = PSALMFusion(tuple(query_channels), tuple(out_channels), num_heads)
    feats = _dummy_pyramid(query_channels)
    query = dict(zip(module.scales, feats))
    support = {s: jax.ShapeDtypeStruct((1, f.shape[-1]), jnp.float32) for s, f in query.items()}
    expected = _expected(module, query, support)
    return _convert(state_dict, expected, _module_key, prefix, _ignore_bn_counters)


def dual_head_from_torch(
    state_dict: Mapping[str, np.ndarray],
    *,
    in_channels: Sequence[int] = (128, 256, 512, 512),
    nc_base: int = 80,
    proto_dims: Sequence[int] = (32, 64, 128, 256),
    num_bins: int = 17,
    prefix: str = "",
) -> dict:
    """``DualDetectionHead`` state dict → {"params", "batch_stats"} of `DualDetectionHead`.

    The original's two ``dfl.conv.weight`` tensors (frozen ``arange(reg_max)`` decode constants,
    sized for 16 bins although the branches emit ``num_bins`` = 17) are not parameters in jdet
    and are skipped. Raises ValueError naming every missing, unexpected or wrongly shaped tensor.
    """
    module = DualDetectionHead(nc_base, tuple(proto_dims), num_bins)
    feats = _dummy_pyramid(in_channels)
    features = dict(zip(module.scales, feats))
    protos = {
        s: jax.ShapeDtypeStruct((1, 1, d), jnp.float32) for s, d in zip(module.scales, proto_dims)
    }
    expected = _expected(module, features, protos)

    def ignored(key: str) -> bool:
        return _ignore_bn_counters(key) or key.endswith("dfl.conv.weight")

    return _convert(state_dict, expected, _module_key, prefix, ignored)


def prototype_projections_from_torch(
    state_dict: Mapping[str, np.ndarray],
    *,
    feat_dim: int = 384,
    dims: Sequence[int] = (32, 64, 128, 256),
    prefix: str = "",
) -> dict:
    """``DINOSupportEncoder`` ``proj_p2..proj_p5`` → {"params"} of `PrototypeProjections`.

    Only keys ``<prefix>proj_p*`` are read (the ViT and ``triplet_proj`` are converted elsewhere).
    """
    module = PrototypeProjections(tuple(dims))
    expected = _expected(module, jax.ShapeDtypeStruct((1, feat_dim), jnp.float32))
    sd = {k: v for k, v in state_dict.items() if k.startswith(prefix + "proj_p")}
    return _convert(sd, expected, _projection_key, prefix, lambda k: False)


def triplet_projection_from_torch(
    state_dict: Mapping[str, np.ndarray],
    *,
    feat_dim: int = 384,
    dim: int = 256,
    prefix: str = "",
) -> dict:
    """``DINOSupportEncoder.triplet_proj`` → {"params"} of `TripletProjection`.

    Only keys ``<prefix>triplet_proj.*`` are read.
    """
    module = TripletProjection(dim)
    expected = _expected(module, jax.ShapeDtypeStruct((1, feat_dim), jnp.float32))
    sd = {k: v for k, v in state_dict.items() if k.startswith(prefix + "triplet_proj.")}
    return _convert(sd, expected, _projection_key, prefix, lambda k: False)
