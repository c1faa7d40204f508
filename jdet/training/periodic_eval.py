"""Evaluation during training: the current weights run over the validation videos
(`jdet.inference`), scored with `jdet.evaluation` (ST-IoU, mAP50, mAP50-95); the best weights by
`eval.best_metric` are kept in workdir/best (what `jdet.predict` loads). Process 0 only in a
multi-process run, on a host copy of the replicated weights.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from jdet import checkpoint
from jdet.checkpoint import BEST
from jdet.config import predict_options, temporal_options
from jdet.evaluation.run import evaluate_records, write_report
from jdet.inference.pipeline import load_samples
from jdet.inference.predictor import Predictor


class Evaluator:
    """Periodic evaluation during training (see the module docstring)."""

    def __init__(self, config, workdir: pathlib.Path, predictor, records):
        self.config, self.workdir = config, workdir
        self.predictor, self.records = predictor, records
        self.metric = config.eval.best_metric
        self.best = checkpoint.best_value(workdir / BEST)
        self.plots: list[pathlib.Path] = []

    @classmethod
    def create(cls, config, workdir: pathlib.Path, state, model, samples) -> Evaluator:
        """model: the RefDet being trained; samples: the challenge-layout folder to score."""
        records = load_samples(samples)
        missing = [r.video_id for r in records if not r.boxes]
        if len(missing) == len(records):
            raise ValueError(
                f"eval.samples={samples}: no video has annotations; evaluation needs "
                "annotations/annotations.json with boxes"
            )
        predictor = Predictor(
            model,
            _weights(state),
            query_size=config.data.query_size,
            support_size=config.data.support_size,
            options=predict_options(config),
        )
        return cls(config, workdir, predictor, records)

    def __call__(self, state, step: int, *, final: bool = False) -> dict[str, Any]:
        e = self.config.eval
        self.predictor.variables = _weights(state)
        result = evaluate_records(
            self.predictor,
            self.records,
            stride=e.stride,
            max_frames=e.max_frames or None,
            temporal=temporal_options(self.config),
            progress=False,
        )
        record = {"step": int(step), **result.metrics}
        value = record[self.metric]
        if self.best is None or value >= self.best:  # ties: the later, longer-trained weights
            self.best = value
            variables = jax.device_get(_weights(state))
            checkpoint.save_best(
                self.workdir / BEST,
                variables,
                {
                    "step": int(step),
                    "metric": self.metric,
                    "value": value,
                    "config": json.loads(self.config.to_json_best_effort()),
                },
            )
        record["metrics/best"] = self.best
        if final:
            self.plots = write_report(self.workdir, result, self.records)
        return record

    def summary_line(self, record: dict[str, Any]) -> str:
        return (
            f"eval @ step {record['step']}: ST-IoU {record['metrics/st_iou']:.4f}, "
            f"mAP50 {record['metrics/mAP50']:.4f}, mAP50-95 {record['metrics/mAP50-95']:.4f} "
            f"(best {self.metric.removeprefix('metrics/')} {self.best:.4f})"
        )


def _weights(state) -> dict[str, Any]:
    """The state's params and BatchNorm statistics; a host copy when other processes hold the
    same (replicated) arrays, so evaluation runs on this process alone."""
    weights = {"params": state.params, "batch_stats": state.batch_stats}
    return jax.device_get(weights) if jax.process_count() > 1 else weights
