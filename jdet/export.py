"""Command line: a trained run → ONNX and `jax.export` files for deployment.

    python -m jdet.export --checkpoint runs/photo0 --out exported/photo0 [--query-size N] [--fp16]

`--checkpoint` takes what `jdet.predict` takes (a run directory, its `checkpoints/` or `best/`).
The folder `--out` receives `encoder.onnx` (reference photos → prototypes, once per video),
`detector.onnx` (letterboxed frames + prototypes → decoded boxes and scores, dynamic batch),
the same two as `encoder.jax` / `detector.jax` (`jax.export`), with `--fp16` also
`*_fp16.onnx`, and `jdet_export.json` (preprocessing, shapes, NMS, the run's appearance
re-scoring and temporal decisions, and the parity with JAX measured on random inputs). The
library is `jdet.inference.export`; `python -m jdet.predict --backend onnx --model DIR` runs a
folder of videos on onnxruntime without JAX.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

from jdet import _xla_defaults
from jdet.checkpoint import CheckpointError
from jdet.inference import export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jdet.export",
        description="Export a trained jdet run to ONNX (and jax.export) with a manifest.",
    )
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/ or best/")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="new or empty folder")
    parser.add_argument(
        "--query-size",
        type=int,
        default=None,
        help="frame size the detector takes (multiple of 32; default: the run's data.query_size)",
    )
    parser.add_argument("--fp16", action="store_true", help="also write float16 ONNX files")
    args = parser.parse_args(argv)
    _xla_defaults.apply()  # before anything starts a JAX backend
    start = time.perf_counter()
    try:
        manifest = export.export_run(
            args.checkpoint, args.out, query_size=args.query_size, fp16=args.fp16
        )
    except (CheckpointError, export.ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"jdet.export: {manifest['source']['run']}")
    for name, file in manifest["files"].items():
        size = (args.out / file).stat().st_size / 2**20
        print(f"  {name:14s} {args.out / file} ({size:.1f} MiB)")
    for tag, p in manifest["parity"].items():
        print(
            f"  parity {tag} (random frames): max |Δ| boxes {p['boxes_max_abs_px']:.1e} px over "
            f"all anchors, {p['kept_boxes_max_abs_px']:.1e} px after NMS (same boxes kept: "
            f"{p['kept_same_count']}), scores {p['scores_max_abs']:.1e}, prototypes "
            f"{p['prototypes_max_abs']:.1e}"
        )
    print(f"wrote {args.out / export.MANIFEST} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
