"""Check jdet against PyTorch on full-size pretrained weights you have (needs the `convert`
extra: torch, ultralytics, transformers). Nothing is downloaded.

    python3 scripts/check_parity.py yolo  yolov8n.pt            [--image 640] [--batch 2]
    python3 scripts/check_parity.py dinov2 path/to/dinov2-small  [--image 224]   # HF folder
    python3 scripts/check_parity.py dinov3 path/to/dinov3-vits16 [--image 256]   # HF folder

It converts the weights with jdet's converters, runs both models in float32 on the same random
input and prints the largest absolute and relative differences per output; exit status 1 when
any exceeds --tol (default 1e-4 relative to the output's scale).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np


def _report(name: str, ours: np.ndarray, ref: np.ndarray, tol: float) -> bool:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        print(f"{name:<14} SHAPE MISMATCH jdet {ours.shape} vs torch {ref.shape}")
        return False
    diff = np.abs(ours - ref)
    scale = max(float(np.abs(ref).max()), 1e-12)
    ok = float(diff.max()) <= tol * scale
    print(
        f"{name:<14} max|Δ| {diff.max():.3e}  max|Δ|/max|ref| {diff.max() / scale:.3e}  "
        f"{'ok' if ok else 'FAIL'}"
    )
    return ok


def _import_transformers():
    """transformers, hiding a torchvision wheel that fails to import against this torch
    ("operator torchvision::nms does not exist"): transformers only needs it for image
    processors. (The same workaround as the fixture generator
    tests/fixtures/generate/parity_vit.py; this user tool, run by path, imports nothing
    outside jdet.)"""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "unusable"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # find_spec → None: transformers sees it as absent
    import transformers

    return transformers


def check_yolo(args) -> bool:
    import jax.numpy as jnp
    import torch

    from jdet.models.convert import yolo_from_torch
    from jdet.models.yolo import YOLOv8

    ckpt = torch.load(args.path, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    model = model.float().eval()
    scale, nc = model.yaml["scale"], int(model.yaml["nc"])
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    variables = yolo_from_torch(state, scale, nc)
    x = (
        np.random.default_rng(0)
        .uniform(0, 1, (args.batch, args.image, args.image, 3))
        .astype(np.float32)
    )
    with torch.no_grad():
        _, raw = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    ours = YOLOv8(scale, nc).apply(variables, jnp.asarray(x))
    ok = True
    for s, o, r in zip((8, 16, 32), ours, raw):
        ok &= _report(f"stride {s}", o, r.permute(0, 2, 3, 1).numpy(), args.tol)
    return ok


def check_vit(args, kind: str) -> bool:
    import jax.numpy as jnp
    import torch

    _import_transformers()
    from transformers import AutoModel

    from jdet.models import convert
    from jdet.models.vit import ViT

    folder = pathlib.Path(args.path)
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights} not found: pass a Hugging Face model folder")
    fn = convert.dinov2_from_safetensors if kind == "dinov2" else convert.dinov3_from_safetensors
    params = fn(weights, args.variant)
    variant = args.variant or ("dinov2-S/14" if kind == "dinov2" else "dinov3-S/16")
    model = AutoModel.from_pretrained(folder, local_files_only=True).float().eval()
    x = (
        np.random.default_rng(0)
        .normal(0, 1, (args.batch, args.image, args.image, 3))
        .astype(np.float32)
    )
    with torch.no_grad():
        hidden = model(
            pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)
        ).last_hidden_state.numpy()
    ours = ViT(variant).apply({"params": params}, jnp.asarray(x))
    num_prefix = hidden.shape[1] - ours["patch"].shape[1]
    ok = _report("cls", ours["cls"], hidden[:, 0], args.tol)
    ok &= _report("patch tokens", ours["patch"], hidden[:, num_prefix:], args.tol)
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["yolo", "dinov2", "dinov3"])
    ap.add_argument("path", help="ultralytics .pt, or a Hugging Face model folder")
    ap.add_argument("--image", type=int, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--variant", default=None, help="jdet ViT variant (default: the ViT-S one)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    if not pathlib.Path(args.path).exists():
        print(f"error: {args.path} does not exist", file=sys.stderr)
        return 2
    if args.kind == "yolo":
        args.image = args.image or 640
        ok = check_yolo(args)
    else:
        args.image = args.image or (224 if args.kind == "dinov2" else 256)
        ok = check_vit(args, args.kind)
    print("parity ok" if ok else "parity FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
