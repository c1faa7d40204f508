"""YOLOv8 forward-parity fixture: a tiny random ultralytics DetectionModel, its weights, one
input and its outputs (needs the `convert` extra: torch + ultralytics 8.3).

    /work/venv-convert/bin/python scripts/parity_yolo.py [--out tests/fixtures] [--seed 0]

Writes `yolo_tiny.npz` with keys
  input        [2, 64, 96, 3] f32   query images in [0, 1], NHWC (non-square on purpose)
  out_s8/16/32 [2, H/s, W/s, 4·16 + nc] f32  raw Detect outputs (eval mode), NHWC
  p2/p3/p4/p5  [2, H/s, W/s, C] f32  outputs of layers 2, 15, 18, 21 (RefDet's taps)
  nc           [] i64 = 3;  scale: the tiny scale "t" = (depth 0.33, width 0.0625, max 1024)
  sd/<name>    every tensor of the model's state_dict (torch layout; floats stored as float16,
               and the torch model ran with exactly those values, so float32 parity is exact)
BatchNorm weights, biases and running statistics are randomised so that eval-mode parity
tests the BN folding too.
"""

from __future__ import annotations

import argparse
import copy
import io
import pathlib
import zipfile

import numpy as np
import torch

TINY_SCALE = [0.33, 0.0625, 1024]


def build_tiny_detection_model(nc: int = 3):
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = copy.deepcopy(yaml_model_load("yolov8n.yaml"))
    cfg["scales"] = {"t": TINY_SCALE}
    cfg["scale"] = "t"
    cfg["nc"] = nc
    return DetectionModel(cfg, ch=3, nc=nc, verbose=False)


def _save_npz_deterministic(path: pathlib.Path, arrays: dict) -> None:
    """np.savez_compressed with fixed member timestamps, so reruns are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]).copy(order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def write_yolo_fixtures(out_dir: pathlib.Path, seed: int) -> list[pathlib.Path]:
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 22])
    model = build_tiny_detection_model(nc=3).float()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)).float())
                mod.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, c)).float())
                mod.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, c)).float())
                mod.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)).float())
        # Round every float tensor to a float16-representable value, so the fixture can store
        # float16 (half the bytes) while torch and jdet still see identical float32 weights.
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    model.eval()
    taps = {"p2": 2, "p3": 15, "p4": 18, "p5": 21}
    captured = {}
    hooks = [
        model.model[i].register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(name, o))
        for name, i in taps.items()
    ]
    images = rng.uniform(0, 1, (2, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        _, raw = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    for h in hooks:
        h.remove()
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy().astype(np.float32)  # noqa: E731
    arrays = {"input": images, "nc": np.int64(3)}
    for s, x in zip((8, 16, 32), raw):
        arrays[f"out_s{s}"] = nhwc(x)
    for name, x in captured.items():
        arrays[name] = nhwc(x)
    for name, t in model.state_dict().items():
        arrays[f"sd/{name}"] = t.numpy().astype(np.float16) if t.is_floating_point() else t.numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "yolo_tiny.npz"
    _save_npz_deterministic(path, arrays)
    return [path]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/fixtures"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for p in write_yolo_fixtures(args.out, args.seed):
        print(f"wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
