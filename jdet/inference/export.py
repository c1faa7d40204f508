"""Export a trained RefDet out of JAX: ONNX (onnxruntime, TensorRT, OpenVINO) and `jax.export`.

The model is cut where inference caches: the support encoder runs once per video, the detector
on every frame batch.

- ``encoder.onnx``: ``support`` [K, S, S, 3] float32 RGB in [0, 1] (the K reference photos
  resized to S², K dynamic) → one prototype per fusion scale, ``p2``…``p5`` [d_scale] float32.
- ``detector.onnx``: ``query`` [B, Q, Q, 3] float32 RGB in [0, 1] (frames letterboxed to Q²
  with grey 114 padding, B dynamic) and the four prototypes → ``boxes`` [B, A, 4] xyxy in
  letterboxed pixels (the DFL expectation decoded, as `jdet.postprocess.decode_boxes`) and
  ``scores`` [B, A] (the sigmoid of the prototype similarity), A anchors over strides 4–32.
  Non-maximum suppression is left to the runtime (`jdet.inference.host_nms` in NumPy):
  decoded boxes and scores are what every runtime can consume, where an NMS inside the graph
  would tie the file to one runtime's NMS operator (ONNX's NonMaxSuppression has no
  ``max_det`` ordering of jdet's greedy rule, and TensorRT replaces it with its own plugin).
- ``encoder.jax`` and ``detector.jax``: the same two functions serialised with `jax.export`
  (StableHLO, symbolic batch), for JAX users without jdet's model code:
  ``jax.export.deserialize(path.read_bytes()).call(...)``.
- ``jdet_export.json`` (`MANIFEST`): preprocessing, input and output names and shapes, the
  NMS settings, the run's appearance re-scoring and temporal decisions, the parity figures
  measured at export time, and versions.

The conversion uses jax2onnx (the `export` extra), which traces the jaxpr of each function.
Convolutions are traced with XLA's own lowering (`LayerImpl(conv="xla")`): jdet's oneDNN
convolutions are a CPU custom call with no ONNX counterpart; depthwise convolutions are traced as
grouped convolutions (``fast_off=("depthwise",)``). With ``fp16`` the ONNX files are
also written in float16 (``*_fp16.onnx``; inputs and outputs stay float32) by onnxruntime's
float16 converter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jdet
from jdet.checkpoint import load_run
from jdet.inference import host_nms
from jdet.inference.onnx_predictor import MANIFEST
from jdet.inference.pipeline import PredictOptions
from jdet.models import build_model
from jdet.models.refdet import SCALES, RefDet
from jdet.postprocess import decode_boxes

FORMAT_VERSION = 1
OPSET = 20  # the first with Gelu; onnxruntime ≥ 1.17 and TensorRT ≥ 10 read it


class ExportError(ValueError):
    """An export that cannot be done as asked (a missing checkpoint, a bad size, no converter)."""


def refdet_functions(
    model: RefDet, variables: dict[str, Any]
) -> tuple[Callable[..., tuple[jax.Array, ...]], Callable[..., tuple[jax.Array, jax.Array]]]:
    """The two exported functions with the weights closed over: ``encode(support [K, S, S, 3])
    → (p2, p3, p4, p5)`` each [d], and ``detect(query [B, Q, Q, 3], p2, p3, p4, p5) → (boxes
    [B, A, 4], scores [B, A])``."""
    # XLA's convolutions (oneDNN's are a CPU custom call ONNX cannot hold) and depthwise
    # convolutions as grouped convolutions: jdet's shifted-slice form, a CPU training speed-up,
    # triples the graph and the converter's time (quadratic in the node count).
    off = tuple(sorted({*model.impl.fast_off, "depthwise"}))
    impl = dataclasses.replace(model.impl, conv="xla", fast_off=off)
    model = model.clone(support_groups=0, impl=impl)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def encode(support):
        out = model.apply(
            variables, support[None, None], jnp.ones((1, 1), bool), method="encode_support"
        )["prototypes"]
        return tuple(out[s][0, 0].astype(jnp.float32) for s in SCALES)

    def detect(query, *prototypes):
        b = query.shape[0]
        protos = {s: jnp.broadcast_to(p, (b, 1, p.shape[-1])) for s, p in zip(SCALES, prototypes)}
        out = model.apply(variables, query, protos, jnp.ones((b, 1), bool), method="detect")
        boxes = decode_boxes(out["dist"], out["anchors"], out["strides"])
        return boxes, jax.nn.sigmoid(out["cls"][..., 0])

    return encode, detect


@contextlib.contextmanager
def _quiet():
    """jax2onnx prints debugging lines and logs shape warnings while it converts."""
    loggers = [logging.getLogger(n) for n in ("jax2onnx", "onnx_ir", "onnx_ir.serde")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_onnx_file(
    fn: Callable,
    inputs: Sequence[tuple[str | int, ...]],
    path: str | pathlib.Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> pathlib.Path:
    """Convert `fn` with jax2onnx and write it to `path`. inputs: one shape per argument, a
    string for a dynamic dimension ("B")."""
    try:
        from jax2onnx import to_onnx
    except ImportError as err:  # pragma: no cover - the extra is installed in CI
        raise ExportError(
            'ONNX export needs the export extra: python3 -m pip install -e ".[export]"'
        ) from err
    with _quiet():
        proto = to_onnx(
            fn,
            list(inputs),
            model_name=pathlib.Path(path).stem,
            opset=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
        )
    path = pathlib.Path(path)
    path.write_bytes(proto.SerializeToString())
    return path


def to_fp16(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """A float16 copy of an ONNX file (weights and compute; float32 inputs and outputs)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def to_jax_export(fn: Callable, inputs: Sequence[jax.ShapeDtypeStruct], path: pathlib.Path):
    """Serialise `fn` with `jax.export` for this platform (StableHLO bytes)."""
    exported = jax.export.export(jax.jit(fn))(*inputs)
    path.write_bytes(exported.serialize())
    return path


def export_refdet(
    model: RefDet,
    variables: dict[str, Any],
    out: str | pathlib.Path,
    *,
    query_size: int,
    support_size: int,
    fp16: bool = False,
    extra: dict[str, Any] | None = None,
    check_frames: int = 2,
) -> dict[str, Any]:
    """Write the files of the module docstring to `out` (created; must be empty or new) and
    return the manifest. The exported files are checked against the JAX functions on
    `check_frames` random frames and three random references; the largest differences go in
    the manifest's ``parity``: over every anchor (``boxes_max_abs_px``, ``scores_max_abs``) and
    over the boxes that survive NMS (``kept_*``), which are what a user gets."""
    if query_size % 32 or query_size < 32:
        raise ExportError(f"--query-size must be a positive multiple of 32, got {query_size}")
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; choose a new output folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    encode, detect = refdet_functions(model, variables)
    s, q = support_size, query_size
    support = np.random.default_rng(0).uniform(0, 1, (3, s, s, 3)).astype(np.float32)
    protos = [np.asarray(p) for p in jax.jit(encode)(support)]
    dims = [int(p.shape[-1]) for p in protos]
    names = list(SCALES)

    to_onnx_file(encode, [("K", s, s, 3)], out / "encoder.onnx",
                 input_names=["support"], output_names=names)  # fmt: skip
    to_onnx_file(
        detect,
        [("B", q, q, 3), *[(d,) for d in dims]],
        out / "detector.onnx",
        input_names=["query", *names],
        output_names=["boxes", "scores"],
    )
    f32 = jnp.float32
    (k,) = jax.export.symbolic_shape("K")
    (b,) = jax.export.symbolic_shape("B")
    to_jax_export(encode, [jax.ShapeDtypeStruct((k, s, s, 3), f32)], out / "encoder.jax")
    to_jax_export(
        detect,
        [jax.ShapeDtypeStruct((b, q, q, 3), f32), *[jax.ShapeDtypeStruct((d,), f32) for d in dims]],
        out / "detector.jax",
    )
    files = {"encoder": "encoder.onnx", "detector": "detector.onnx"}
    if fp16:
        to_fp16(out / "encoder.onnx", out / "encoder_fp16.onnx")
        to_fp16(out / "detector.onnx", out / "detector_fp16.onnx")
        files.update(encoder_fp16="encoder_fp16.onnx", detector_fp16="detector_fp16.onnx")
    files.update(encoder_jax="encoder.jax", detector_jax="detector.jax")

    query = np.random.default_rng(1).uniform(0, 1, (check_frames, q, q, 3)).astype(np.float32)
    want_boxes, want_scores = (np.asarray(x) for x in jax.jit(detect)(query, *protos))
    parity = {}
    nms = dict(iou_threshold=0.45, conf_threshold=0.001, max_det=100)
    want_kept = host_nms.batched_nms(want_boxes, want_scores, **nms)
    for tag in ("", "_fp16") if fp16 else ("",):
        got_protos, got_boxes, got_scores = run_onnx(out, support, query, tag)
        parity[tag.strip("_") or "fp32"] = {
            "prototypes_max_abs": max(
                float(np.abs(g - w).max()) for g, w in zip(got_protos, protos)
            ),
            "boxes_max_abs_px": float(np.abs(got_boxes - want_boxes).max()),
            "scores_max_abs": float(np.abs(got_scores - want_scores).max()),
            **_kept_parity(host_nms.batched_nms(got_boxes, got_scores, **nms), want_kept),
        }
    manifest = {
        "format": "jdet-export",
        "format_version": FORMAT_VERSION,
        "jdet_version": jdet.__version__,
        "jax_version": jax.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "query_size": q,
        "support_size": s,
        "anchors": int(want_boxes.shape[1]),
        "preprocess": {
            "layout": "NHWC",
            "dtype": "float32",
            "channels": "RGB",
            "scale": "pixel / 255",
            "query": f"letterbox to {q}x{q}: resize (bilinear) so the long side is {q}, centre, "
            "pad with grey 114 (jdet.data.transforms.letterbox)",
            "support": f"each reference photo resized (bilinear) to {s}x{s}",
        },
        "inputs": {
            "encoder": {"support": ["K", s, s, 3]},
            "detector": {"query": ["B", q, q, 3], **{n: [d] for n, d in zip(names, dims)}},
        },
        "outputs": {
            "encoder": {n: [d] for n, d in zip(names, dims)},
            "detector": {
                "boxes": ["B", int(want_boxes.shape[1]), 4],
                "scores": ["B", int(want_boxes.shape[1])],
            },
        },
        "nms": {
            "iou_threshold": 0.45,
            "conf_threshold": 0.001,
            "max_det": 100,
            "pre_nms_topk": 1000,
        },  # fmt: skip
        "files": files,
        "opset": OPSET,
        "parity": parity,
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _kept_parity(got, want) -> dict[str, Any]:
    """The detections after NMS (what reaches a user): whether both keep the same number per
    frame, and the largest box difference among the rows both keep."""
    (gb, _, gv), (wb, _, wv) = got, want
    both = gv & wv
    return {
        "kept_same_count": bool((gv.sum(-1) == wv.sum(-1)).all()),
        "kept_boxes_max_abs_px": float(np.abs(gb - wb)[both].max()) if both.any() else 0.0,
    }


def run_onnx(
    directory: pathlib.Path, support: np.ndarray, query: np.ndarray, tag: str = ""
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Run an export's ONNX files on onnxruntime: (prototypes, boxes, scores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    enc = ort.InferenceSession(str(directory / f"encoder{tag}.onnx"), so)
    det = ort.InferenceSession(str(directory / f"detector{tag}.onnx"), so)
    protos = enc.run(None, {"support": support})
    feeds = {"query": query, **{n: p for n, p in zip(SCALES, protos)}}
    boxes, scores = det.run(None, feeds)
    return protos, boxes, scores


def _check_weights(model: RefDet, variables: dict[str, Any], config, checkpoint) -> None:
    """ExportError naming the checkpoint when its weights do not fit the model its config
    describes (a missing, extra or differently shaped parameter)."""
    q, s = config.data.query_size, config.data.support_size
    example = {
        "query": jax.ShapeDtypeStruct((1, q, q, 3), jnp.float32),
        "support": jax.ShapeDtypeStruct((1, 1, 3, s, s, 3), jnp.float32),
    }
    want = jax.eval_shape(lambda ex: model.init(jax.random.PRNGKey(0), ex), example)["params"]
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(want)}
    got = {
        jax.tree_util.keystr(k): np.shape(v)
        for k, v in jax.tree_util.tree_leaves_with_path(variables["params"])
    }
    for key in sorted(want.keys() | got.keys()):
        if want.get(key) != got.get(key):
            raise ExportError(
                f"{checkpoint}: its weights do not match the model of its config: params{key} "
                f"is {got.get(key, 'missing')} in the checkpoint, the model wants "
                f"{want.get(key, 'nothing')}"
            )


def export_run(
    checkpoint: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    query_size: int | None = None,
    fp16: bool = False,
) -> dict[str, Any]:
    """A training run (run directory, checkpoints/ or best/, as `jdet.predict` takes) →
    `export_refdet` with the run's query and support sizes (or `query_size`) and its
    inference settings (NMS, appearance re-scoring, temporal decisions) in the manifest."""
    config, variables, description = load_run(checkpoint)
    model = build_model(config, support_groups=0)
    _check_weights(model, variables, config, checkpoint)
    temporal = config.eval.get("temporal")
    extra = {
        "source": {"checkpoint": str(pathlib.Path(checkpoint).absolute()), "run": description},
        "appearance": float(config.eval.get("appearance", 0.0)),
        "temporal": None if temporal is None else temporal.to_dict(),
        "nms": {
            "iou_threshold": float(config.eval.iou_threshold),
            "conf_threshold": PredictOptions.nms_conf_threshold,
            "max_det": int(config.eval.max_det),
            "pre_nms_topk": 1000,
        },
    }
    return export_refdet(
        model,
        variables,
        out,
        query_size=query_size or config.data.query_size,
        support_size=config.data.support_size,
        fp16=fp16,
        extra=extra,
    )
