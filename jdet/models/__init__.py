"""The models: YOLOv8 (query detector), ViT (support encoder), PSALM fusion, the dual head and
RefDet, which joins them; `build_model(config)` builds a RefDet from a training config."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jdet.models.impl import LayerImpl
from jdet.models.refdet import RefDet


def build_model(config: Any, *, support_groups: int | None = None) -> RefDet:
    """The RefDet a training config describes (`model` section, `loss.cfg.num_bins`); its
    convolution implementation is `model.conv` ("" = the environment's JDET_CPU_CONV).

    support_groups: episodes per batch, whose queries share one support set (default: the
    training batch's, `train.batch_size // (data.n_way · data.q_query)`); 0 = every query has
    its own support set (inference).
    """
    m = config.model
    if support_groups is None:
        support_groups = config.train.batch_size // (config.data.n_way * config.data.q_query)
    return RefDet(
        yolo_scale=m.yolo_scale,
        encoder=m.encoder,
        frozen_blocks=m.frozen_blocks,
        nc_base=m.nc_base,
        num_bins=config.loss.cfg.num_bins,
        support_groups=support_groups,
        proto_logit_bias=m.proto_logit_bias,
        dtype=jnp.dtype(m.dtype),
        impl=LayerImpl(conv=m.get("conv") or None),  # runs saved before the field: the default
    )
