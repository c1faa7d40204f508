"""Inference in JAX: a trained RefDet over videos → scored boxes per frame.

`Predictor` is the video pipeline of `jdet.inference.pipeline.BasePredictor` (decode,
letterbox, batches, tiling, appearance re-scoring) with the model run in JAX: the support
encoder once per video, then `detect` jit-compiled for one batch shape, decoded and NMS'd on
device (`jdet.postprocess`).

`Predictor.from_checkpoint(path)` (a run, checkpoints/ or best/; `jdet.checkpoint.load_run`),
`Predictor.predict_video(...)`, `jdet.inference.pipeline.predict_folder(...)` →
`jdet.submission.Detections`; the challenge's one box per frame is decided from them by
`jdet.inference.temporal`. The command line is `python -m jdet.predict`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdet.checkpoint import load_run
from jdet.inference.pipeline import BasePredictor, PredictOptions, load_samples, predict_folder
from jdet.models import build_model
from jdet.models.refdet import RefDet
from jdet.postprocess import postprocess

# The public names of inference from JAX code (the pipeline's live in jdet.inference.pipeline).
__all__ = ["Predictor", "PredictOptions", "load_samples", "predict_folder"]


class Predictor(BasePredictor):
    """A trained RefDet, ready to run on videos (jit-compiled once per input size)."""

    def __init__(
        self,
        model: RefDet,
        variables: dict[str, Any],
        *,
        query_size: int,
        support_size: int,
        options: PredictOptions = PredictOptions(),
    ):
        if query_size % 32:
            raise ValueError(f"query_size={query_size} must be a multiple of 32")
        self.model = model.clone(support_groups=0)
        self.variables = jax.device_put(
            {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        )
        self.query_size, self.support_size, self.options = query_size, support_size, options
        o = options

        def encode(variables, support):  # [1, 1, K, S, S, 3] → {scale: [1, 1, d]}
            mask = jnp.ones(support.shape[:2], bool)
            return self.model.apply(variables, support, mask, method="encode_support")["prototypes"]

        def detect(variables, query, prototypes):  # query [B, s, s, 3]
            b = query.shape[0]
            protos = {k: jnp.broadcast_to(p, (b, *p.shape[1:])) for k, p in prototypes.items()}
            out = self.model.apply(
                variables, query, protos, jnp.ones((b, 1), bool), method="detect"
            )
            return postprocess(
                out,
                max_det=o.max_det,
                iou_threshold=o.iou_threshold,
                conf_threshold=o.nms_conf_threshold,
            )

        self._encode = jax.jit(encode)
        self._detect = jax.jit(detect)

    @classmethod
    def from_checkpoint(
        cls, path: str | pathlib.Path, options: PredictOptions = PredictOptions()
    ) -> Predictor:
        config, variables, desc = load_run(path)
        if options.appearance is None:
            options = dataclasses.replace(options, appearance=config.eval.get("appearance", 0.0))
        predictor = cls(
            build_model(config, support_groups=0),
            variables,
            query_size=config.data.query_size,
            support_size=config.data.support_size,
            options=options,
        )
        predictor.description = desc
        predictor.config = config  # the run's config (its eval.temporal decisions, …)
        return predictor

    # -- pieces ------------------------------------------------------------------------------

    def _encode_support(self, support: np.ndarray) -> dict[str, jax.Array]:
        """[K, S, S, 3] → prototypes {scale: [1, 1, d]} (on device)."""
        return self._encode(self.variables, support[None, None])

    def _detect_batch(self, query, prototypes):
        det = jax.device_get(self._detect(self.variables, query, prototypes))
        return det.boxes, det.scores, det.valid
