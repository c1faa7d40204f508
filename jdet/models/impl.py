"""`LayerImpl`: which code a model's layers trace to, as a model field (no global switch).

Every module that holds a convolution takes `impl: LayerImpl` and hands it to its children, so
one field on the root (`RefDet(impl=...)`, `YOLOv8(impl=...)`; the training config's
`model.conv`) decides it for the whole model. The choices compute the same functions; values
differ by float32 rounding only.
"""

from __future__ import annotations

import dataclasses

from jdet.models.onednn_conv import check_choice, conv_backend, conv_description, use_onednn

FAST_PARTS = ("bn_act", "maxpool", "s2grad", "depthwise")


@dataclasses.dataclass(frozen=True)
class LayerImpl:
    """conv: the convolution backend, "auto" | "onednn" | "xla", or None for the environment
    variable ``JDET_CPU_CONV`` (default "auto"; `jdet.models.onednn_conv.conv_backend` says
    what each means). fast: jdet's custom-gradient layers (BatchNorm + SiLU in one op, a
    separable max-pool, the stride-2 3×3 convolution, depthwise convolutions as shifted
    slices; `jdet.models.fast_layers`) and oneDNN;
    False = Flax's own modules only. fast_off: parts of the fast path turned off one by one
    (a subset of `FAST_PARTS`; the benchmarks measure each part's share)."""

    conv: str | None = None
    fast: bool = True
    fast_off: tuple[str, ...] = ()

    def __post_init__(self):
        check_choice(self.conv)
        unknown = set(self.fast_off) - set(FAST_PARTS)
        if unknown:
            raise ValueError(f"fast_off must be a subset of {FAST_PARTS}, got {sorted(unknown)}")

    def uses(self, part: str) -> bool:
        """Whether the fast path's `part` (one of `FAST_PARTS`) is on."""
        return self.fast and part not in self.fast_off

    def onednn(self, *dtypes) -> bool:
        """Whether a layer's convolution with these dtypes, traced now, runs through oneDNN."""
        return self.fast and use_onednn(self.conv, *dtypes)

    def backend(self) -> str:
        """ "onednn" or "xla": what float32 convolutions of this model trace to now."""
        return conv_backend(self.conv) if self.fast else "xla"

    def describe(self) -> str:
        """For run logs: "oneDNN 3.2.0" or "XLA"."""
        return conv_description(self.conv) if self.fast else "XLA"
