"""2-D convolutions through oneDNN on XLA:CPU (`jdet.native.onednn`), with their gradients.

`conv2d(x, w, strides, padding)` is `lax.conv_general_dilated` (NHWC activations, HWIO
kernel, groups 1, no dilation, float32) whose forward, input gradient and weight gradient run
as oneDNN primitives through XLA FFI custom calls on the CPU platform, and as XLA's own
convolution on any other platform (`lax.platform_dependent`). Same function: the values
differ by float32 rounding only (tests/test_onednn_conv.py).

Why: per layer shape of YOLOv8n at 320² (batch 8, 2-core AMD EPYC), oneDNN's forward + both
gradients take 1.4–4.8× less time than XLA:CPU's (Eigen or YNNPACK) convolutions — most of
all the strided and few-channel layers whose XLA input gradient is a slow zero-dilated
convolution — and the weight gradient needs no layout transposes (docs/benchmarks.md).

When it is used is `conv_backend(choice)`'s decision: the model's `LayerImpl.conv` field
(`jdet.models.impl`), whose default is the environment variable ``JDET_CPU_CONV``; see its
docstring.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdet.native import onednn

ENV = "JDET_CPU_CONV"
CHOICES = ("auto", "onednn", "xla")
_WARNED: set[str] = set()  # "auto" fell back to XLA: said once per process


def _env_choice() -> str:
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {os.environ[ENV]!r}")
    return choice


def check_choice(choice: str | None) -> None:
    """ValueError unless `choice` is None (the environment's) or one of "auto", "onednn", "xla"."""
    if choice is not None and choice not in CHOICES:
        raise ValueError(f"conv backend must be one of {', '.join(CHOICES)}, got {choice!r}")


def prepare(choice: str | None = None) -> None:
    """Start building the oneDNN extension in the background when `choice` may use it on this
    process's backend (`jdet.native.onednn.start_build`): a first run then compiles it while
    it prepares its data. Starts JAX's backend (call it after `jax.distributed` is set up)."""
    check_choice(choice)
    choice = choice or _env_choice()
    if choice == "xla" or jax.default_backend() != "cpu":
        return
    if choice == "auto" and jax.device_count() != 1:
        return
    onednn.start_build()


def conv_backend(choice: str | None = None) -> str:
    """ "onednn" or "xla": what a 2-D float32 convolution traced now with `choice` runs as.

    choice (a model's `LayerImpl.conv`; None = ``JDET_CPU_CONV``, default "auto"):

    - "auto" (default): oneDNN when JAX's default backend is the CPU with a single device and
      the extension loads (Linux x86-64 with jdet's oneDNN dependencies, plus a C++ compiler
      for the one-time build), else XLA. Several devices mean XLA because a custom call has
      no SPMD partitioning rule: under a jit sharded over devices XLA would gather its
      operands and run it whole on every device (correct, but slow); CPU device meshes are
      for testing multi-device code on one machine anyway.
    - "onednn": oneDNN whenever the extension loads (an error saying why when it cannot);
      on other platforms the same traced program still runs XLA's convolution.
    - "xla": XLA's own convolutions.
    """
    check_choice(choice)
    choice = choice or _env_choice()
    if choice == "xla":
        return "xla"
    if choice == "auto" and (jax.default_backend() != "cpu" or jax.device_count() != 1):
        return "xla"
    try:
        onednn.load()
    except onednn.OneDnnUnavailable as e:
        if choice == "onednn":
            raise
        _warn_once(e)
        return "xla"
    return "onednn"


def _warn_once(error: Exception) -> None:
    """ "auto" fell back to XLA although oneDNN is installed (a failed build): say so once."""
    if _WARNED:
        return
    _WARNED.add("auto")
    try:
        onednn.find_onednn()
    except onednn.OneDnnUnavailable:
        return  # not installed (not Linux x86-64): XLA's convolutions are expected
    print(
        f"jdet: oneDNN convolutions unavailable, using XLA's ({ENV}=xla silences this): {error}",
        file=sys.stderr,
        flush=True,
    )


def use_onednn(choice: str | None, *dtypes) -> bool:
    """Whether a convolution with these (compute, operand) dtypes, traced now with `choice`,
    goes through oneDNN: all float32 and `conv_backend(choice)` is "onednn"."""
    return all(jnp.dtype(d) == jnp.float32 for d in dtypes) and conv_backend(choice) == "onednn"


def conv_description(choice: str | None = None) -> str:
    """For run logs: "oneDNN 3.2.0" or "XLA" (what `conv_backend(choice)` picks now)."""
    if conv_backend(choice) == "onednn":
        return f"oneDNN {onednn.version()}"
    return "XLA"


def _pads(padding: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
    (pt, pb), (pl, pr) = padding
    return int(pt), int(pb), int(pl), int(pr)


def _xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _attrs(strides, padding) -> dict:
    pt, pb, pl, pr = _pads(padding)
    return dict(
        stride_h=np.int64(strides[0]),
        stride_w=np.int64(strides[1]),
        pad_top=np.int64(pt),
        pad_bottom=np.int64(pb),
        pad_left=np.int64(pl),
        pad_right=np.int64(pr),
    )


def _ffi(name: str, shape, *args, strides, padding):
    call = jax.ffi.ffi_call(
        name, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential"
    )
    return call(*args, **_attrs(strides, padding))


def _fwd_impl(x, w, strides, padding):
    shape = jax.eval_shape(lambda a, b: _xla_conv(a, b, strides, padding), x, w).shape

    def cpu(a, b):
        return _ffi("jdet_onednn_conv_fwd", shape, a, b, strides=strides, padding=padding)

    return lax.platform_dependent(
        x, w, cpu=cpu, default=lambda a, b: _xla_conv(a, b, strides, padding)
    )


def _bwd_impl(x, w, dy, strides, padding):
    def cpu(a, b, g):
        dx = _ffi("jdet_onednn_conv_bwd_data", a.shape, g, b, strides=strides, padding=padding)
        dw = _ffi("jdet_onednn_conv_bwd_weights", b.shape, a, g, strides=strides, padding=padding)
        return dx, dw

    def default(a, b, g):
        _, vjp = jax.vjp(lambda p, q: _xla_conv(p, q, strides, padding), a, b)
        return vjp(g)

    return lax.platform_dependent(x, w, dy, cpu=cpu, default=default)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, padding):
    return _fwd_impl(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return _fwd_impl(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, res, dy):
    x, w = res
    return _bwd_impl(x, w, dy, strides, padding)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
) -> jax.Array:
    """oneDNN convolution (see the module docstring): x [N, H, W, C_in] f32, w [KH, KW,
    C_in, C_out] f32, explicit (low, high) padding per spatial axis. Raises
    `jdet.native.onednn.OneDnnUnavailable` when the extension cannot be loaded."""
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d wants x [N,H,W,C] and w [KH,KW,C,O]; got {x.shape}, {w.shape}")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise ValueError(f"conv2d is float32 only; got {x.dtype}, {w.dtype}")
    onednn.load()  # registers the FFI targets; OneDnnUnavailable says why it cannot
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(x, w, strides, padding)


class OneDnnConv(nn.Module):
    """nn.Conv(features, (k, k), strides, symmetric padding k // 2) through `conv2d`: the same
    parameters ("kernel" [k, k, C_in, features], lecun_normal; "bias" [features] when
    use_bias, added after the convolution)."""

    features: int
    kernel: int
    stride: int = 1
    use_bias: bool = False
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        pad = k // 2
        y = conv2d(x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y
