"""Convert pretrained weights to a jdet weights folder that `config.init` can load.

    # ultralytics YOLOv8 checkpoint (needs the `convert` extra: torch + ultralytics)
    python3 scripts/convert_weights.py yolov8n.pt --out weights/yolov8n
    # Hugging Face DINOv2 / DINOv3 (only safetensors + numpy; no torch)
    python3 scripts/convert_weights.py dinov2-small/model.safetensors --kind dinov2 \\
        --out weights/dinov2_s14
    python3 scripts/convert_weights.py dinov3-vits16/model.safetensors --kind dinov3 \\
        --out weights/dinov3_s16

The output folder holds an orbax pytree (`variables/`) and `jdet_meta.json` (kind, scale,
classes, source file, parameter counts). Any tensor that does not map onto the jdet module,
and any the module needs but the file lacks, is reported by name and nothing is written.
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def _load_ultralytics(path: pathlib.Path):
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "reading an ultralytics .pt needs torch and ultralytics: "
            'python3 -m pip install -e ".[convert]"'
        ) from e
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if model is None:
        raise SystemExit(f"{path}: no 'model' or 'ema' entry; is this an ultralytics checkpoint?")
    yaml = getattr(model, "yaml", {}) or {}
    scale = yaml.get("scale")
    if scale is None:
        raise SystemExit(f"{path}: its model yaml has no 'scale'; pass --scale")
    state = {k: v.float().numpy() for k, v in model.float().state_dict().items()}
    return state, scale, int(model.nc if hasattr(model, "nc") else yaml["nc"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=pathlib.Path, help="yolov8*.pt or model.safetensors")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="new output folder")
    ap.add_argument(
        "--kind",
        choices=["yolo", "dinov2", "dinov3"],
        default=None,
        help="default: yolo for .pt, required for .safetensors",
    )
    ap.add_argument("--scale", default=None, help="YOLOv8 scale (default: from the checkpoint)")
    ap.add_argument("--variant", default=None, help="ViT variant (default: inferred)")
    args = ap.parse_args(argv)

    from jdet.checkpoint import save_variables
    from jdet.models import convert

    src = args.source
    if not src.exists():
        print(f"error: {src} does not exist", file=sys.stderr)
        return 2
    kind = args.kind or ("yolo" if src.suffix == ".pt" else None)
    if kind is None:
        print("error: pass --kind dinov2 or --kind dinov3 for a .safetensors file", file=sys.stderr)
        return 2
    try:
        if kind == "yolo":
            state, scale, nc = _load_ultralytics(src)
            scale = args.scale or scale
            variables = convert.yolo_from_torch(state, scale, nc)
            meta = {"kind": "yolo", "scale": scale, "num_classes": nc}
        else:
            from jdet.models import convert_hf

            fn = (
                convert.dinov2_from_safetensors
                if kind == "dinov2"
                else convert.dinov3_from_safetensors
            )
            variables = {"params": fn(src, args.variant)}
            variant = args.variant or convert_hf.infer_variant(
                convert_hf.load_safetensors(src), kind
            )
            meta = {"kind": kind, "variant": variant}
    except ValueError as e:
        print(f"error: {src}: {e}", file=sys.stderr)
        return 1
    out = save_variables(args.out, variables, {**meta, "source": str(src.absolute())})
    print(f"wrote {out} ({meta})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
