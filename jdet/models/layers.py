"""YOLOv8 building blocks in Flax linen, NHWC.

Follows ultralytics/nn/modules/conv.py (`Conv`) and block.py (`Bottleneck`, `C2f`, `SPPF`),
8.3 era: Conv2d without bias + BatchNorm (eps 1e-3, momentum 0.03 in torch terms, i.e. flax
momentum 0.97) + SiLU, "same" padding k // 2. Submodule names follow ultralytics' state-dict
names (`conv`, `bn`, `cv1`, `cv2`, `m_0` …) so conversion is a renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdet.models.fast_layers import FastBatchNorm, StridedConv3x3
from jdet.models.impl import LayerImpl
from jdet.models.onednn_conv import OneDnnConv

Dtype = Any

BN_EPS = 1e-3
BN_MOMENTUM = 0.97  # flax convention: ra = m·ra + (1 − m)·batch; torch momentum 0.03


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of divisor ≥ x (ultralytics utils/ops.make_divisible)."""
    return int(-(-x // divisor) * divisor)


# ---------------------------------------------------------------------------- fast path
# The training step on CPU spends as much time in BatchNorm + SiLU (several elementwise passes
# forward, more in autodiff's backward) and in the max-pool gradient (select-and-scatter) as in
# many convolutions. The "fast" implementations below compute the same float32 functions with
# hand-written gradients that touch each activation fewer times (`python -m benchmarks profile ab`
# measures them; tests/test_fast_path.py checks values and gradients against the plain ones).
# `LayerImpl(fast=False)` (jdet.models.impl) uses Flax's own modules (same parameters and names).


def max_pool_same(x: jax.Array, size: int, impl: LayerImpl = LayerImpl()) -> jax.Array:
    """Stride-1 "same" max-pool (−inf padding) over H, W of [B, H, W, C].

    Fast path: separable maxima of shifted slices (W then H) whose gradient is elementwise
    selects instead of XLA:CPU's slow select-and-scatter. On exact ties inside a window the
    gradient is split between the tied inputs rather than given to the first one (both are
    valid subgradients; ties do not occur for continuous activations).
    """
    pad = size // 2
    if not impl.uses("maxpool"):
        return nn.max_pool(x, (size, size), strides=(1, 1), padding=((pad, pad), (pad, pad)))
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (0, 0)), constant_values=-jnp.inf)
    y = xp[:, :, 0:w]
    for i in range(1, size):
        y = jnp.maximum(y, xp[:, :, i : i + w])
    yp = jnp.pad(y, ((0, 0), (pad, pad), (0, 0), (0, 0)), constant_values=-jnp.inf)
    out = yp[:, 0:h]
    for i in range(1, size):
        out = jnp.maximum(out, yp[:, i : i + h])
    return out


class PointwiseConv(nn.Module):
    """1×1 convolution without bias as a channel matmul; kernel [1, 1, C_in, C_out] like nn.Conv."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (1, 1, x.shape[-1], self.features),
            jnp.float32,
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


class ConvBNAct(nn.Module):
    """Conv2d(k, s, pad k//2, no bias) → BatchNorm → SiLU (ultralytics `Conv`).

    BatchNorm defaults to ultralytics' eps 1e-3 / momentum 0.03; the original RefDet head
    modules use torch's defaults (bn_eps 1e-5, bn_momentum 0.9 in flax terms).
    """

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True
    dtype: Dtype = jnp.float32
    bn_eps: float = BN_EPS
    bn_momentum: float = BN_MOMENTUM
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pad = self.kernel // 2
        if self.groups == 1 and self.impl.onednn(self.dtype, x.dtype):
            # oneDNN's convolutions and gradients on XLA:CPU (jdet.models.onednn_conv), 1×1
            # included (faster there than XLA's dot). Same parameter.
            x = OneDnnConv(self.features, self.kernel, self.stride, name="conv")(x)
        elif self.kernel == 1 and self.stride == 1 and self.groups == 1:
            # A 1×1 convolution is a matmul over channels; XLA:CPU runs it ~15 % faster as a
            # dot than as a convolution (YOLOv8n eval forward, batch 8, 320²). Same parameter.
            x = PointwiseConv(self.features, dtype=self.dtype, name="conv")(x)
        elif (
            self.impl.uses("s2grad")
            and (self.kernel, self.stride, self.groups) == (3, 2, 1)
            and x.shape[1] % 2 == 0
            and x.shape[2] % 2 == 0
            and jnp.dtype(self.dtype) == jnp.float32
            and x.dtype == jnp.float32
        ):
            x = StridedConv3x3(self.features, name="conv")(x)
        else:
            x = nn.Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                feature_group_count=self.groups,
                use_bias=False,
                dtype=self.dtype,
                name="conv",
            )(x)
        if self.impl.uses("bn_act") and jnp.dtype(self.dtype) == jnp.float32:
            return FastBatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_eps,
                act=self.act,
                name="bn",
            )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_eps,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.silu(x) if self.act else x


class Bottleneck(nn.Module):
    """Two 3×3 convs with an optional residual (ultralytics `Bottleneck`, e = 1.0 in C2f)."""

    features: int
    shortcut: bool = True
    expansion: float = 0.5
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        y = ConvBNAct(hidden, 3, dtype=self.dtype, impl=self.impl, name="cv1")(x, train)
        y = ConvBNAct(self.features, 3, dtype=self.dtype, impl=self.impl, name="cv2")(y, train)
        return x + y if self.shortcut and x.shape[-1] == self.features else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convs (ultralytics `C2f`): split, n bottlenecks, concat all."""

    features: int
    repeats: int = 1
    shortcut: bool = False
    expansion: float = 0.5
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        y = ConvBNAct(2 * hidden, 1, dtype=self.dtype, impl=self.impl, name="cv1")(x, train)
        parts = [y[..., :hidden], y[..., hidden:]]
        for i in range(self.repeats):
            parts.append(
                Bottleneck(
                    hidden, self.shortcut, 1.0, dtype=self.dtype, impl=self.impl, name=f"m_{i}"
                )(parts[-1], train)
            )
        return ConvBNAct(self.features, 1, dtype=self.dtype, impl=self.impl, name="cv2")(
            jnp.concatenate(parts, axis=-1), train
        )


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (ultralytics `SPPF`): three chained 5×5 max-pools."""

    features: int
    pool: int = 5
    dtype: Dtype = jnp.float32
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = x.shape[-1] // 2
        y = [ConvBNAct(hidden, 1, dtype=self.dtype, impl=self.impl, name="cv1")(x, train)]
        for _ in range(3):
            y.append(max_pool_same(y[-1], self.pool, self.impl))
        return ConvBNAct(self.features, 1, dtype=self.dtype, impl=self.impl, name="cv2")(
            jnp.concatenate(y, axis=-1), train
        )


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour ×2 upsampling, [B, H, W, C] → [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class DetectBranch(nn.Module):
    """Conv 3×3 → Conv 3×3 → Conv2d 1×1 with bias (one branch of ultralytics `Detect`)."""

    hidden: int
    out: int
    bias_init: float = 0.0
    dtype: Dtype = jnp.float32
    bn_eps: float = BN_EPS
    bn_momentum: float = BN_MOMENTUM
    impl: LayerImpl = LayerImpl()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = dict(
            dtype=self.dtype, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, impl=self.impl
        )
        x = ConvBNAct(self.hidden, 3, **bn, name="0")(x, train)
        x = ConvBNAct(self.hidden, 3, **bn, name="1")(x, train)
        if self.impl.onednn(self.dtype, x.dtype):
            return OneDnnConv(
                self.out,
                1,
                use_bias=True,
                bias_init=nn.initializers.constant(self.bias_init),
                name="2",
            )(x)
        return nn.Conv(
            self.out,
            (1, 1),
            dtype=self.dtype,
            bias_init=nn.initializers.constant(self.bias_init),
            name="2",
        )(x)


def detect_hidden(in_channels: Sequence[int], num_classes: int, reg_max: int) -> tuple[int, int]:
    """Hidden widths (box, cls) of the Detect branches, as ultralytics computes them."""
    c_box = max(16, in_channels[0] // 4, reg_max * 4)
    c_cls = max(in_channels[0], min(num_classes, 100))
    return c_box, c_cls
