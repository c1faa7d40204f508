"""YOLOv8 detector (backbone, PAN neck, decoupled Detect head) in Flax linen, NHWC.

Follows ultralytics/cfg/models/v8/yolov8.yaml and nn/tasks.py `parse_model` (8.3): the same
23 layers, widths `make_divisible(min(c, max_channels) · width, 8)`, depths
`max(round(n · depth), 1)`, and the "legacy" v8 Detect head (two 3×3 Convs + 1×1 Conv2d per
branch). Modules are named ``model_{i}`` after ultralytics' ``model.{i}`` so that
`jdet.models.convert.yolo_from_torch` is a renaming.

RefDet taps four maps (docs/original.md §2): layer 2 (P2, stride 4), 15 (P3), 18 (P4), 21 (P5).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdet.models.impl import LayerImpl
from jdet.models.layers import (
    SPPF,
    C2f,
    ConvBNAct,
    DetectBranch,
    detect_hidden,
    make_divisible,
    upsample2x,
)

# scale → (depth multiple, width multiple, max channels), ultralytics yolov8.yaml; "t" and
# "t2" are tiny test scales (widths 8/8/16/32/64 and 8/16/32/64/128; RefDet's fusion needs ≥ 16
# channels at P2, hence "t2"), not ultralytics models.
SCALES: dict[str, tuple[float, float, int]] = {
    "t": (0.33, 0.0625, 1024),
    "t2": (0.33, 0.125, 1024),
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
STRIDES = (8, 16, 32)
TAPS = {"p2": 2, "p3": 15, "p4": 18, "p5": 21}
TAP_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


def yolo_widths(scale: str) -> dict[str, int]:
    """Channel widths of a scale: keys c64, c128, c256, c512, c1024 (yaml values)."""
    if scale not in SCALES:
        raise ValueError(f"unknown YOLOv8 scale {scale!r}; choose one of {sorted(SCALES)}")
    _, width, max_ch = SCALES[scale]
    return {f"c{c}": make_divisible(min(c, max_ch) * width, 8) for c in (64, 128, 256, 512, 1024)}


def yolo_depth(scale: str, n: int) -> int:
    depth = SCALES[scale][0]
    return max(round(n * depth), 1) if n > 1 else n


def tap_channels(scale: str) -> dict[str, int]:
    """Channels of the RefDet taps P2/P3/P4/P5 (YOLOv8n: 32/64/128/256)."""
    w = yolo_widths(scale)
    return {"p2": w["c128"], "p3": w["c256"], "p4": w["c512"], "p5": w["c1024"]}


class YOLOv8(nn.Module):
    """YOLOv8 at a given scale.

    Attributes:
      scale: "n" | "s" | "m" | "l" | "x" | "t" (tiny, tests).
      num_classes: detection classes.
      reg_max: DFL bins per side (ultralytics' 16).
      dtype: compute dtype (parameters stay float32).
      impl: which code the layers trace to (convolution backend, fast path; jdet.models.impl).

    `apply(variables, images [B,H,W,3] f32 in [0,1], train=False)` returns a list over strides
    (8, 16, 32) of ``[B, H/s, W/s, 4·reg_max + num_classes]`` raw head outputs (box channels
    side-major l, t, r, b × reg_max, then classes). With ``features_only=True`` it returns
    ``{"p2", "p3", "p4", "p5"}`` feature maps and the Detect head is never built. H and W must
    be multiples of 32.
    """

    scale: str = "n"
    num_classes: int = 80
    reg_max: int = 16
    dtype: Any = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, features_only: bool = False):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"YOLOv8 expects images [B, H, W, 3], got {images.shape}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"YOLOv8 input H, W must be multiples of 32, got {images.shape[1:3]}")
        w = yolo_widths(self.scale)
        d = lambda n: yolo_depth(self.scale, n)  # noqa: E731
        kw = dict(dtype=self.dtype, impl=self.impl)
        x = images.astype(self.dtype)
        outs: dict[int, jax.Array] = {}

        def run(i, module, inp):
            outs[i] = module(inp, train)
            return outs[i]

        # Backbone.
        x = run(0, ConvBNAct(w["c64"], 3, 2, **kw, name="model_0"), x)
        x = run(1, ConvBNAct(w["c128"], 3, 2, **kw, name="model_1"), x)
        x = run(2, C2f(w["c128"], d(3), True, **kw, name="model_2"), x)
        x = run(3, ConvBNAct(w["c256"], 3, 2, **kw, name="model_3"), x)
        x = run(4, C2f(w["c256"], d(6), True, **kw, name="model_4"), x)
        x = run(5, ConvBNAct(w["c512"], 3, 2, **kw, name="model_5"), x)
        x = run(6, C2f(w["c512"], d(6), True, **kw, name="model_6"), x)
        x = run(7, ConvBNAct(w["c1024"], 3, 2, **kw, name="model_7"), x)
        x = run(8, C2f(w["c1024"], d(3), True, **kw, name="model_8"), x)
        x = run(9, SPPF(w["c1024"], 5, **kw, name="model_9"), x)
        # PAN neck: layers 10/11, 13/14, 16/17, 19/20 are upsample/concat/conv steps.
        x = jnp.concatenate([upsample2x(x), outs[6]], -1)
        x = run(12, C2f(w["c512"], d(3), False, **kw, name="model_12"), x)
        x = jnp.concatenate([upsample2x(x), outs[4]], -1)
        x = run(15, C2f(w["c256"], d(3), False, **kw, name="model_15"), x)
        x = run(16, ConvBNAct(w["c256"], 3, 2, **kw, name="model_16"), x)
        x = run(
            18,
            C2f(w["c512"], d(3), False, **kw, name="model_18"),
            jnp.concatenate([x, outs[12]], -1),
        )
        x = run(19, ConvBNAct(w["c512"], 3, 2, **kw, name="model_19"), x)
        x = run(
            21,
            C2f(w["c1024"], d(3), False, **kw, name="model_21"),
            jnp.concatenate([x, outs[9]], -1),
        )
        if features_only:
            return {name: outs[i] for name, i in TAPS.items()}
        return Detect(self.num_classes, self.reg_max, STRIDES, **kw, name="model_22")(
            [outs[15], outs[18], outs[21]], train
        )


class Detect(nn.Module):
    """ultralytics v8 `Detect`: per level a box branch (4·reg_max) and a class branch.

    Biases start as ultralytics' `bias_init`: box 1.0, class log(5 / nc / (640 / s)²).
    Returns a list of [B, H, W, 4·reg_max + nc] per level.
    """

    num_classes: int
    reg_max: int = 16
    strides: tuple[int, ...] = STRIDES
    dtype: Any = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, feats: list[jax.Array], train: bool = False) -> list[jax.Array]:
        c_box, c_cls = detect_hidden([f.shape[-1] for f in feats], self.num_classes, self.reg_max)
        out = []
        for i, (f, s) in enumerate(zip(feats, self.strides)):
            box = DetectBranch(
                c_box, 4 * self.reg_max, 1.0, self.dtype, impl=self.impl, name=f"cv2_{i}"
            )(f, train)
            prior = math.log(5 / self.num_classes / (640 / s) ** 2)
            cls = DetectBranch(
                c_cls, self.num_classes, prior, self.dtype, impl=self.impl, name=f"cv3_{i}"
            )(f, train)
            out.append(jnp.concatenate([box, cls], axis=-1))
        return out
