"""The exported detector on onnxruntime against jdet in JAX, on this machine; a Jetson projection.

    python -m benchmarks onnx [--config configs/photo.py] [--checkpoint RUN] [--frames 96]

The model is the config's (random weights; speed does not depend on them) or a run's. It is
exported with `jdet.inference.export.export_refdet` into a temp folder, then timed in one
process, the two runtimes interleaved (`benchmarks.timing.time_calls`) so that load from other
processes hits both alike:

- model only: letterboxed frames → decoded boxes and scores (no NMS), batch 1 and 8: jdet's
  JAX function as `jdet.predict` runs it (oneDNN convolutions on one CPU device) and the
  ONNX file on onnxruntime (fp32; fp16 with --fp16);
- the whole video pipeline on a generated 640×360 video: `Predictor` (JAX) against
  `OnnxPredictor` (decode, letterbox, model, NMS, mapping back), batch 1 and 8;
- the detector's FLOPs per frame (XLA's cost analysis of the exported function at batch 1) and
  the GFLOP/s each runtime reaches;
- a projection (not a measurement) of frames/s on Jetson boards: FP32 CUDA-core peak
  (cores × clock × 2) × the fraction of peak onnxruntime reaches here / FLOPs per frame.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

from benchmarks.timing import time_call, time_calls

# Jetson GPUs: (CUDA cores, GPU clock GHz) from NVIDIA's module data sheets (the highest
# standard power mode; Orin Nano and NX with the JetPack 6.1 "Super" clocks).
JETSON = {
    "Jetson Orin Nano 8GB": (1024, 1.020),
    "Jetson Orin NX 16GB": (1024, 1.173),
    "Jetson AGX Orin 64GB": (2048, 1.300),
    "Jetson Xavier NX": (384, 1.100),
    "Jetson AGX Xavier": (512, 1.377),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/photo.py", help="recipe whose model to time")
    parser.add_argument("--checkpoint", default=None, help="a run instead of random weights")
    parser.add_argument("--frames", type=int, default=96, help="frames of the test video")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fp16", action="store_true", help="also time the float16 ONNX files")


def _model(args):
    import jax

    from jdet.checkpoint import load_run
    from jdet.models import build_model

    if args.checkpoint:
        config, variables, desc = load_run(args.checkpoint)
    else:
        config = _recipe(args.config)
        q, s = config.data.query_size, config.data.support_size
        model = build_model(config, support_groups=0)
        batch = {
            "query": np.zeros((1, q, q, 3), np.float32),
            "support": np.zeros((1, 1, 3, s, s, 3), np.float32),
        }
        variables = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), batch))
        desc = f"{args.config} (random weights)"
    return config, build_model(config, support_groups=0), variables, desc


def _recipe(spec: str):
    """configs/x.py[:arg] → its get_config(arg)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_recipe", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def measure_onnx(args: argparse.Namespace) -> dict:
    import jax
    import onnxruntime as ort

    from benchmarks.flops import xla_flops
    from jdet.data import synthetic, zalo
    from jdet.inference import export
    from jdet.inference.onnx_predictor import OnnxPredictor
    from jdet.inference.pipeline import PredictOptions
    from jdet.inference.predictor import Predictor
    from jdet.models.refdet import SCALES
    from jdet.postprocess import decode_boxes

    config, model, variables, desc = _model(args)
    q, s = config.data.query_size, config.data.support_size
    result = {"model": desc, "query": q, "support": s, "rows": [], "video": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        convert = time_call(
            lambda: export.export_refdet(
                model, variables, tmp / "x", query_size=q, support_size=s, fp16=args.fp16
            ),
            0,
            sync=None,
        )
        result["export_s"], result["parity"] = convert.first_s, convert.last["parity"]
        rng = np.random.default_rng(0)
        support = rng.uniform(0, 1, (3, s, s, 3)).astype(np.float32)
        # jdet's own path (oneDNN where jdet.predict uses it) and the exported (XLA-conv) one
        predictor = Predictor(model, variables, query_size=q, support_size=s)
        encode_x, detect_x = export.refdet_functions(model, variables)
        protos = [np.asarray(p) for p in jax.jit(encode_x)(support)]
        jit_protos = predictor._encode_support(support)

        def jdet_detect(query):
            b = query.shape[0]
            pd = {k: np.broadcast_to(p, (b, *p.shape[1:])) for k, p in jit_protos.items()}
            out = predictor.model.apply(
                predictor.variables, query, pd, np.ones((b, 1), bool), method="detect"
            )
            return decode_boxes(out["dist"], out["anchors"], out["strides"]), out["cls"]

        jdet_detect = jax.jit(jdet_detect)
        flops = xla_flops(
            jax.jit(detect_x).lower(np.zeros((1, q, q, 3), np.float32), *protos).compile()
        )
        result["flops"] = flops
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sessions = {"onnxruntime fp32": tmp / "x" / "detector.onnx"}
        if args.fp16:
            sessions["onnxruntime fp16"] = tmp / "x" / "detector_fp16.onnx"
        sessions = {k: ort.InferenceSession(str(p), so) for k, p in sessions.items()}
        feeds = dict(zip(SCALES, protos))
        for b in (1, 8):
            query = rng.uniform(0, 1, (b, q, q, 3)).astype(np.float32)
            fns = {"jdet (JAX)": lambda query=query: jdet_detect(query)}
            for name, sess in sessions.items():
                fns[name] = lambda sess=sess, query=query: sess.run(None, {"query": query, **feeds})
            times = time_calls(fns, args.repeats, sync=_sync)
            for name, t in times.items():
                result["rows"].append({"runtime": name, "batch": b, "fps": b / min(t.times)})
        root = synthetic.generate(
            tmp / "v", num_videos=1, seed=0, frames=args.frames, width=640, height=360,
            reference_size=256,
        )  # fmt: skip
        folder = next((root / "samples").iterdir())
        video = folder / "drone_video.mp4"
        photos = [zalo.load_reference(p) for p in zalo.find_references(folder / "object_images")[0]]
        for b in (1, 8):
            opts = PredictOptions(batch_size=b, appearance=0.0)
            jdet_predictor = Predictor(model, variables, query_size=q, support_size=s, options=opts)
            runners = {
                "jdet (JAX)": jdet_predictor,
                "onnxruntime fp32": OnnxPredictor(tmp / "x", opts),
            }
            for r in runners.values():
                r.predict_video(video, photos, max_frames=b)  # compile / warm up
            fns = {k: (lambda r=r: r.predict_video(video, photos)) for k, r in runners.items()}
            times = time_calls(fns, 2, warmup=False, sync=None)
            for name, t in times.items():
                frames = len(t.last)
                result["video"].append({"runtime": name, "batch": b, "fps": frames / min(t.times)})
    return result


def _sync(out):
    import jax

    return jax.block_until_ready(out) if not isinstance(out, list) else out


def bench_onnx(args: argparse.Namespace) -> None:
    import jax
    import onnxruntime as ort

    r = measure_onnx(args)
    q, flops = r["query"], r["flops"]
    print(
        f"{r['model']}: query {q}², references {r['support']}²; jax {jax.__version__}, "
        f"onnxruntime {ort.__version__}; export {r['export_s']:.0f} s; parity "
        + ", ".join(
            f"{k}: boxes {v['boxes_max_abs_px']:.1e} px (after NMS "
            f"{v['kept_boxes_max_abs_px']:.1e}), scores {v['scores_max_abs']:.1e}"
            for k, v in r["parity"].items()
        )
    )
    print(f"detector FLOPs per frame: {flops / 1e9:.2f} G (XLA cost analysis, batch 1)")
    print()
    print("| model only | batch | frames/s | GFLOP/s |")
    print("|---|---:|---:|---:|")
    for row in r["rows"]:
        print(
            f"| {row['runtime']} | {row['batch']} | {row['fps']:.1f} | "
            f"{row['fps'] * flops / 1e9:.1f} |"
        )
    print()
    print("| 640×360 video, whole pipeline | batch | frames/s |")
    print("|---|---:|---:|")
    for row in r["video"]:
        print(f"| {row['runtime']} | {row['batch']} | {row['fps']:.1f} |")
    ort_rows = [x for x in r["rows"] if x["runtime"] == "onnxruntime fp32"]
    best = max(x["fps"] for x in ort_rows) * flops
    peak = _cpu_peak()
    if peak:
        util = best / peak
        print()
        print(
            f"PROJECTION, not a measurement: onnxruntime reaches {best / 1e9:.1f} GFLOP/s here, "
            f"{100 * util:.0f} % of this CPU's float32 peak ({peak / 1e9:.0f} GFLOP/s, "
            "`python -m benchmarks peak`); at the same fraction of each board's FP32 CUDA-core "
            "peak (cores × clock × 2):"
        )
        print()
        print("| board | FP32 peak (TFLOP/s) | projected frames/s |")
        print("|---|---:|---:|")
        for name, (cores, ghz) in JETSON.items():
            board = cores * ghz * 2e9
            print(f"| {name} | {board / 1e12:.2f} | {util * board / flops:.0f} |")


def _cpu_peak() -> float | None:
    """This CPU's float32 peak in FLOP/s as `benchmarks.peak` measures it (None if it fails)."""
    try:
        from benchmarks.peak import measure_peak

        return 1e9 * float(measure_peak(argparse.Namespace(quick=False, repeats=3))["peak_gflops"])
    except Exception:  # noqa: BLE001 - the projection is optional
        return None
