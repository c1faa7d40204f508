"""The fast layer path's custom-gradient ops (jdet.models.layers uses them by default).

- `bn_act_train` / `FastBatchNorm`: training BatchNorm (batch statistics) fused with SiLU under
  a hand-written backward that recomputes the normalised value instead of storing it;
- `conv3x3_s2` / `StridedConv3x3`: a stride-2 3×3 convolution whose input gradient is four
  phase matmuls instead of XLA:CPU's zero-dilated convolution.
- `depthwise_conv` / `DepthwiseConv`: a grouped convolution with one input channel per group
  (PSALM's depthwise 3×3 and 7×7, its stride-2 bottom-up convolution) as the sum of k²
  shifted slices times the kernel's taps, one fused elementwise loop. XLA:CPU runs
  ``feature_group_count`` convolutions through a generic loop: on 8×64×64×16 maps a 7×7
  depthwise convolution took 252 ms that way and 5.9 ms as shifted slices (3×3: 84 vs 1.4 ms;
  2-core Xeon, 2026-12-01), which made PSALM fusion 80 % of RefDet's inference time.

Same values, variables and gradients as Flax's modules (tests/test_fast_path.py); measured
effect on the YOLOv8n train step in docs/benchmarks.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


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


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (stride, stride), padding k // 2 on each side,
    feature_group_count=C)`` for x [B, H, W, C] and kernel [k, k, 1, F] with F a multiple of
    C (output channel o reads input channel o // (F / C), as XLA groups them), as the sum
    over the k² taps of a shifted, strided slice of the padded input times the tap's F
    weights. Gradients are those of slices and products (autodiff)."""
    k, _, one, features = kernel.shape
    b, h, w, c = x.shape
    if one != 1 or kernel.shape[1] != k or features % c:
        raise ValueError(
            f"depthwise_conv needs a [k, k, 1, F] kernel with F a multiple of C={c}, got "
            f"{kernel.shape}"
        )
    if features != c:  # channel multiplier m: output o reads input o // m
        x = jnp.repeat(x, features // c, axis=-1)
    pad = k // 2
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            tap = lax.slice(
                xp,
                (0, i, j, 0),
                (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, features),
                (1, stride, stride, 1),
            )
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """nn.Conv(features, (k, k), strides, padding k // 2, feature_group_count = the input's
    channels = `groups`) through `depthwise_conv`: the same parameter names, shapes and initialisers
    ("kernel" [k, k, 1, features] lecun_normal, "bias" [features] zeros when use_bias);
    computed in `dtype` like nn.Conv."""

    features: int
    kernel: int
    stride: int = 1
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    groups: int | None = None  # must equal the input's channels (checked); None: not checked

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.groups is not None and x.shape[-1] != self.groups:
            raise ValueError(
                f"DepthwiseConv needs one input channel per group: {x.shape[-1]} channels, "
                f"{self.groups} groups"
            )
        k = self.kernel
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, self.features))
        dtype = self.dtype or jnp.result_type(x, kernel)
        y = depthwise_conv(x.astype(dtype), kernel.astype(dtype), self.stride)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
        return y
