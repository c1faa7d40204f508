"""YOLOv8 building blocks in Flax linen, NHWC.

Follows ultralytics/nn/modules/conv.py (`Conv`) and block.py (`Bottleneck`, `C2f`, `SPPF`),
8.3 era: Conv2d without bias + BatchNorm (eps 1e-3, momentum 0.03 in torch terms, i.e. flax
momentum 0.97) + SiLU, "same" padding k // 2. Submodule names follow ultralytics' state-dict
names (`conv`, `bn`, `cv1`, `cv2`, `m_0` …) so conversion is a renaming.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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
# hand-written gradients that touch each activation fewer times (scripts/profile_step.py
# measures them; tests/test_fast_path.py checks values and gradients against the plain ones).
# `layer_impl("plain")` switches back to Flax's own modules (same parameters and names).

_IMPL = {"value": "fast"}
# Parts of the fast path that can be turned off one by one (scripts/profile_step.py ab
# --b fast-maxpool measures each one's share).
_FAST_OPTS = {"bn_act": True, "maxpool": True, "s2grad": True}


@contextlib.contextmanager
def layer_impl(impl: str) -> Iterator[None]:
    """Within the block, layers built/traced use "plain" (Flax's modules) or "fast" code."""
    if impl not in ("plain", "fast"):
        raise ValueError(f"layer impl must be 'plain' or 'fast', got {impl!r}")
    old = _IMPL["value"]
    _IMPL["value"] = impl
    try:
        yield
    finally:
        _IMPL["value"] = old


def _fast() -> bool:
    return _IMPL["value"] == "fast"


def _bn_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flax BatchNorm's statistics: mean and the clipped one-pass variance over N, H, W."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    mean2 = jnp.mean(x * x, axes)
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def bn_act_train(x, scale, bias, eps: float, act: bool):
    """Training-mode BatchNorm (batch statistics) + optional SiLU, as one differentiable op.

    x [..., C] f32; scale, bias [C]. Returns (y, mean, var): y = silu((x − mean)·scale/√(var+eps)
    + bias) (no SiLU when act is False) and the batch statistics for the running averages (their
    cotangents are ignored: they only feed the non-differentiated `batch_stats`). Same function as
    flax's BatchNorm (one-pass variance clipped at 0) followed by `nn.silu`; the backward pass
    recomputes the normalised value from x instead of storing it.
    """
    return _bn_act_fwd(x, scale, bias, eps, act)[0]


def _bn_act_apply(x, mean, mul, bias, act):
    z = (x - mean) * mul + bias
    return z * jax.nn.sigmoid(z) if act else z


def _bn_act_fwd(x, scale, bias, eps, act):
    mean, var = _bn_stats(x)
    inv = lax.rsqrt(var + eps)
    y = _bn_act_apply(x, mean, inv * scale, bias, act)
    return (y, mean, var), (x, mean, inv, scale, bias)


def _bn_act_bwd(eps, act, res, cts):
    x, mean, inv, scale, bias = res
    dy = cts[0]
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    xhat = (x - mean) * inv
    if act:
        z = xhat * scale + bias
        sig = jax.nn.sigmoid(z)
        dz = dy * (sig * (1.0 + z * (1.0 - sig)))
    else:
        dz = dy
    dbias = jnp.sum(dz, axes)
    dscale = jnp.sum(dz * xhat, axes)
    dx = (scale * inv) * (dz - (dbias / count) - xhat * (dscale / count))
    return dx, dscale, dbias


bn_act_train.defvjp(_bn_act_fwd, _bn_act_bwd)


class FastBatchNorm(nn.Module):
    """flax.linen.BatchNorm over all but the last axis (same variables: params scale/bias,
    batch_stats mean/var; same running-average update), optionally fused with SiLU.

    Training mode goes through `bn_act_train`; eval mode is the plain affine map.
    """

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
    act: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if self.use_running_average:
            mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
            return _bn_act_apply(x, ra_mean.value, mul, bias, self.act)
        y, mean, var = bn_act_train(x, scale, bias, self.epsilon, self.act)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var
        return y


def max_pool_same(x: jax.Array, size: int) -> jax.Array:
    """Stride-1 "same" max-pool (−inf padding) over H, W of [B, H, W, C].

    Fast path: separable maxima of shifted slices (W then H) whose gradient is elementwise
    selects instead of XLA:CPU's slow select-and-scatter. On exact ties inside a window the
    gradient is split between the tied inputs rather than given to the first one (both are
    valid subgradients; ties do not occur for continuous activations).
    """
    pad = size // 2
    if not (_fast() and _FAST_OPTS["maxpool"]):
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
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def _conv_s2(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def conv3x3_s2(x: jax.Array, w: jax.Array) -> jax.Array:
    """3×3 convolution, stride 2, padding 1 (NHWC, HWIO) of an input with even H and W.

    Same value and weight gradient as `lax.conv_general_dilated`; the input gradient is
    computed by output phase as matmuls instead of XLA:CPU's transposed strided convolution
    (a zero-dilated convolution on a slow generic path). Input row 2m gets kernel row 1 of
    output row m; row 2m+1 gets kernel row 2 of output m and kernel row 0 of output m+1
    (likewise for columns), so each of the 4 (row, column) phases of dx is one matmul of
    dy and its shifted copies against the matching kernel taps.
    """
    return _conv_s2(x, w)


def _conv_s2_fwd(x, w):
    return _conv_s2(x, w), (x, w)


# (phase, source) → kernel tap along one axis: phase 0/1 = even/odd input index, source
# 0/1 = output index m / m + 1.
_S2_TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


def _conv_s2_bwd(res, dy):
    x, w = res
    _, vjp_w = jax.vjp(lambda k: _conv_s2(x, k), w)
    (dw,) = vjp_w(dy)
    b, h, wd, _ = dy.shape
    shift_y = jnp.pad(dy[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))
    shift_x = jnp.pad(dy[:, :, 1:], ((0, 0), (0, 0), (0, 1), (0, 0)))
    shift_xy = jnp.pad(dy[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0)))
    sources = {(0, 0): dy, (0, 1): shift_x, (1, 0): shift_y, (1, 1): shift_xy}
    phases = []
    for py in (0, 1):
        for px in (0, 1):
            used = [
                (src, w[_S2_TAPS[(py, sy)], _S2_TAPS[(px, sx)]])
                for (sy, sx), src in sources.items()
                if (py, sy) in _S2_TAPS and (px, sx) in _S2_TAPS
            ]
            lhs = jnp.concatenate([u[0] for u in used], -1)  # [B, h, w, n·C_out]
            rhs = jnp.concatenate([u[1].T for u in used], 0)  # [n·C_out, C_in]
            phases.append(lhs @ rhs)
    ci = x.shape[-1]
    dx = jnp.stack(phases, 3).reshape(b, h, wd, 2, 2, ci)  # [..., py, px, C_in]
    dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * wd, ci)
    return dx, dw


conv3x3_s2.defvjp(_conv_s2_fwd, _conv_s2_bwd)


class StridedConv3x3(nn.Module):
    """nn.Conv(features, (3, 3), strides 2, padding 1, no bias) through `conv3x3_s2`
    (same parameter name, shape and initialiser)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        return conv3x3_s2(x, kernel)


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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pad = self.kernel // 2
        if self.kernel == 1 and self.stride == 1 and self.groups == 1:
            # A 1×1 convolution is a matmul over channels; XLA:CPU runs it ~15 % faster as a
            # dot than as a convolution (YOLOv8n eval forward, batch 8, 320²). Same parameter.
            x = PointwiseConv(self.features, dtype=self.dtype, name="conv")(x)
        elif (
            _fast()
            and _FAST_OPTS["s2grad"]
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
        if _fast() and _FAST_OPTS["bn_act"] and jnp.dtype(self.dtype) == jnp.float32:
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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        y = ConvBNAct(hidden, 3, dtype=self.dtype, name="cv1")(x, train)
        y = ConvBNAct(self.features, 3, dtype=self.dtype, name="cv2")(y, train)
        return x + y if self.shortcut and x.shape[-1] == self.features else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convs (ultralytics `C2f`): split, n bottlenecks, concat all."""

    features: int
    repeats: int = 1
    shortcut: bool = False
    expansion: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        y = ConvBNAct(2 * hidden, 1, dtype=self.dtype, name="cv1")(x, train)
        parts = [y[..., :hidden], y[..., hidden:]]
        for i in range(self.repeats):
            parts.append(
                Bottleneck(hidden, self.shortcut, 1.0, dtype=self.dtype, name=f"m_{i}")(
                    parts[-1], train
                )
            )
        return ConvBNAct(self.features, 1, dtype=self.dtype, name="cv2")(
            jnp.concatenate(parts, axis=-1), train
        )


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (ultralytics `SPPF`): three chained 5×5 max-pools."""

    features: int
    pool: int = 5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = x.shape[-1] // 2
        y = [ConvBNAct(hidden, 1, dtype=self.dtype, name="cv1")(x, train)]
        for _ in range(3):
            y.append(max_pool_same(y[-1], self.pool))
        return ConvBNAct(self.features, 1, dtype=self.dtype, name="cv2")(
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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = dict(dtype=self.dtype, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
        x = ConvBNAct(self.hidden, 3, **bn, name="0")(x, train)
        x = ConvBNAct(self.hidden, 3, **bn, name="1")(x, train)
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
