"""Inference on onnxruntime, without JAX: the files `python -m jdet.export` writes → scored boxes.

`OnnxPredictor.from_dir(DIR)` reads ``DIR/jdet_export.json`` and the two ONNX files it names;
the video pipeline (decode, letterbox, batches, tiling, appearance re-scoring) is
`jdet.inference.pipeline.BasePredictor`'s, NMS is `jdet.inference.host_nms` with the manifest's
settings. This module and the pipeline import NumPy, PyAV, Pillow and onnxruntime only, so a
board that runs it needs no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from jdet.inference import host_nms
from jdet.inference.pipeline import BasePredictor, PredictOptions

MANIFEST = "jdet_export.json"  # what python -m jdet.export writes beside the ONNX files


class ExportDirError(ValueError):
    """A folder that is not a usable jdet export; names the folder and what is missing."""


def read_manifest(directory: str | pathlib.Path) -> dict[str, Any]:
    """DIR/jdet_export.json, checked: ExportDirError naming the folder or file otherwise."""
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ExportDirError(f"{directory}: no such folder (write one with python -m jdet.export)")
    if not path.exists():
        raise ExportDirError(
            f"{directory}: no {MANIFEST}; not a folder written by python -m jdet.export"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportDirError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != "jdet-export":
        raise ExportDirError(f"{path}: not a jdet export manifest (format is not 'jdet-export')")
    for key in ("query_size", "support_size", "files", "nms"):
        if key not in manifest:
            raise ExportDirError(f"{path}: the field {key!r} is missing")
    return manifest


class OnnxPredictor(BasePredictor):
    """An exported RefDet on onnxruntime (CPU by default; `providers` as onnxruntime takes them).

    options.appearance None → the manifest's ``appearance`` (the run's eval.appearance);
    options' NMS IoU and max_det are used, the candidate threshold and top-k come from the
    manifest. ``fp16`` runs the ``*_fp16.onnx`` files (written with ``--fp16``).
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        options: PredictOptions = PredictOptions(),
        *,
        fp16: bool = False,
        threads: int | None = None,
        providers: list[str] | None = None,
    ):
        import onnxruntime as ort

        self.directory = pathlib.Path(directory)
        self.manifest = m = read_manifest(self.directory)
        if options.appearance is None:
            options = dataclasses.replace(options, appearance=float(m.get("appearance", 0.0)))
        self.options = options
        self.query_size, self.support_size = int(m["query_size"]), int(m["support_size"])
        files = m["files"]
        keys = ("encoder_fp16", "detector_fp16") if fp16 else ("encoder", "detector")
        paths = []
        for key in keys:
            if key not in files:
                flag = " (export again with --fp16)" if fp16 else ""
                raise ExportDirError(f"{self.directory / MANIFEST}: no {key!r} file{flag}")
            path = self.directory / files[key]
            if not path.exists():
                raise ExportDirError(f"{path}: missing (named in {MANIFEST} as {key!r})")
            paths.append(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.log_severity_level = 3  # errors only: not its constant-folding notes on fp16 graphs
        providers = providers or ["CPUExecutionProvider"]
        self._encoder, self._detector = (
            ort.InferenceSession(str(p), so, providers=providers) for p in paths
        )
        self._proto_names = [o.name for o in self._encoder.get_outputs()]
        run = m.get("source", {}).get("run", "an unnamed run")
        self.description = f"{self.directory}: ONNX{' fp16' if fp16 else ''} export of {run}"
        self.config = None

    @classmethod
    def from_dir(
        cls, directory: str | pathlib.Path, options: PredictOptions = PredictOptions(), **kw
    ) -> OnnxPredictor:
        return cls(directory, options, **kw)

    def _encode_support(self, support: np.ndarray) -> list[np.ndarray]:
        return self._encoder.run(None, {"support": support})

    def _detect_batch(self, query, prototypes):
        feeds = {"query": query, **dict(zip(self._proto_names, prototypes))}
        boxes, scores = self._detector.run(None, feeds)
        nms = self.manifest["nms"]
        return host_nms.batched_nms(
            boxes,
            scores,
            max_det=self.options.max_det,
            iou_threshold=self.options.iou_threshold,
            conf_threshold=nms.get("conf_threshold", self.options.nms_conf_threshold),
            pre_nms_topk=nms.get("pre_nms_topk", 1000),
        )
