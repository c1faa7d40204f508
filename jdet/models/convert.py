"""Weight import: PyTorch / Hugging Face tensors → jdet variables, by name, never silently.

- `yolo_from_torch(state_dict, scale, num_classes)`: an ultralytics DetectionModel state dict
  (names ``model.{i}.…``) → ``{"params", "batch_stats"}`` for `jdet.models.yolo.YOLOv8`.
- `dinov2_from_safetensors(path)`, `dinov3_from_safetensors(path)`: Hugging Face `Dinov2Model`
  / `DINOv3ViTModel` weights → params for `jdet.models.vit.ViT` (jdet/models/convert_hf.py).

Every converter compares the names it receives with the names the jdet module expects and
raises a `ValueError` listing every missing and every unexpected tensor, and every shape
mismatch; nothing is dropped quietly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jdet.models import convert_hf
from jdet.models.yolo import YOLOv8

# Buffers that carry no information for jdet.
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _torch_to_yolo_path(name: str) -> tuple[str, tuple[str, ...]] | None:
    """ultralytics name → (collection, jdet path), or None when it is not a YOLOv8 tensor.

    model.2.m.0.cv1.conv.weight   → params/model_2/m_0/cv1/conv/kernel
    model.4.cv2.bn.running_var    → batch_stats/model_4/cv2/bn/var
    model.22.cv3.1.2.bias         → params/model_22/cv3_1/2/bias
    """
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        return None
    path = [f"model_{parts[1]}"]
    i = 2
    body, leaf = parts[:-1], parts[-1]
    while i < len(body):
        p = body[i]
        if p in ("m", "cv2", "cv3") and i + 1 < len(body) and body[i + 1].isdigit():
            path.append(f"{p}_{body[i + 1]}")
            i += 2
        else:
            path.append(p)
            i += 1
    if path[-1] == "bn":
        leaf_map = {
            "weight": ("params", "scale"),
            "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var"),
        }
        if leaf not in leaf_map:
            return None
        collection, leaf_name = leaf_map[leaf]
    elif leaf in ("weight", "bias"):
        collection, leaf_name = "params", ("kernel" if leaf == "weight" else "bias")
    else:
        return None
    return collection, tuple(path) + (leaf_name,)


def _to_jdet_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """Conv kernels OIHW → HWIO; everything else as is."""
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    return array


def _expected_variables(module, *example_args, **kwargs) -> dict[str, dict[tuple, Any]]:
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_args, **kwargs))
    return {c: traverse_util.flatten_dict(v) for c, v in shapes.items()}


def check_and_unflatten(
    expected: Mapping[str, Mapping[tuple, Any]],
    provided: Mapping[str, Mapping[tuple, np.ndarray]],
    unexpected: list[str],
    what: str,
    origin: Mapping[tuple, str] | None = None,
) -> dict[str, Any]:
    """Compare provided flat variables with the expected ones; raise naming every problem.

    origin maps (collection, path) to the source tensor's name, used in messages.
    """
    origin = origin or {}

    def source(collection, key):
        name = origin.get((collection, key))
        return (
            f"{name} (→ {collection}/{'/'.join(key)})" if name else f"{collection}/{'/'.join(key)}"
        )

    problems = []
    for collection, leaves in expected.items():
        got = provided.get(collection, {})
        missing = sorted("/".join(k) for k in leaves if k not in got)
        if missing:
            problems.append(f"missing {collection}: {', '.join(missing)}")
        for k, v in got.items():
            if k in leaves and tuple(leaves[k].shape) != tuple(v.shape):
                problems.append(
                    f"shape mismatch {source(collection, k)}: expected {tuple(leaves[k].shape)},"
                    f" got {tuple(v.shape)}"
                )
        unexpected = unexpected + [source(collection, k) for k in got if k not in leaves]
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected))}")
    if problems:
        raise ValueError(f"{what}: cannot convert weights:\n  " + "\n  ".join(problems))
    return {
        c: traverse_util.unflatten_dict(
            {k: jnp.asarray(v, jnp.float32) for k, v in provided[c].items()}
        )
        for c in expected
    }


def yolo_from_torch(
    state_dict: Mapping[str, Any], scale: str, num_classes: int, reg_max: int = 16
) -> dict[str, Any]:
    """ultralytics DetectionModel state dict → YOLOv8 variables {"params", "batch_stats"}.

    Args:
      state_dict: name → array (numpy or anything `np.asarray` takes; torch tensors via
        `.numpy()` first), e.g. ``ckpt["model"].float().state_dict()`` of a yolov8n.pt.
      scale, num_classes, reg_max: the jdet YOLOv8 to fill.

    Raises:
      ValueError naming every missing or unexpected tensor and every shape mismatch.
    """
    module = YOLOv8(scale=scale, num_classes=num_classes, reg_max=reg_max)
    expected = _expected_variables(module, jnp.zeros((1, 64, 64, 3), jnp.float32))
    provided: dict[str, dict[tuple, np.ndarray]] = {"params": {}, "batch_stats": {}}
    unexpected = []
    origin = {}
    for name, value in state_dict.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        array = np.asarray(value, dtype=np.float32)
        if re.fullmatch(r"model\.\d+\.dfl\.conv\.weight", name):
            # ultralytics' DFL is a frozen 1×1 conv holding 0 … reg_max−1; jdet computes the
            # same expectation directly. Check it is the standard one rather than drop it.
            if array.size != reg_max or not np.allclose(array.ravel(), np.arange(reg_max)):
                raise ValueError(f"{name}: expected the fixed DFL weights 0..{reg_max - 1}")
            continue
        target = _torch_to_yolo_path(name)
        if target is None:
            unexpected.append(name)
            continue
        collection, path = target
        provided[collection][path] = _to_jdet_layout(array, path[-1])
        origin[(collection, path)] = name
    return check_and_unflatten(
        expected, provided, unexpected, f"yolo_from_torch(scale={scale!r})", origin
    )


def dinov2_from_safetensors(path, variant=None):
    """Hugging Face Dinov2Model safetensors → ViT params (see jdet/models/convert_hf.py)."""
    return convert_hf.dinov2_from_safetensors(path, variant)


def dinov3_from_safetensors(path, variant=None):
    """Hugging Face DINOv3ViTModel safetensors → ViT params (see jdet/models/convert_hf.py)."""
    return convert_hf.dinov3_from_safetensors(path, variant)
